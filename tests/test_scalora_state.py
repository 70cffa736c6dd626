"""ScaLoRA's merged update is trained state: best/, the adapter folder and training checkpoints carry it.
A tiny BERT classifier built in code, trained by the real loop (train/loop.py fit) with merges every 3
steps: (a) reloading best/ when the best step is not the last gives the model as it was at the best
step, and so does the adapter saved from it; (b) a run that crashes after a merge and resumes from
its checkpoint matches an uninterrupted run (losses, best step, final weights, bit for bit)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from transformers import BertConfig, BertForSequenceClassification

from tunelab.config.schema import TrainConfig
from tunelab.methods.scalora import ScaLoraConfig, ScaLoraLinear, ScaLoraMethod
from tunelab.runs.rundir import RunDir
from tunelab.train.callbacks import load_best, run_callbacks
from tunelab.train.loop import LoopHooks, fit

torch.set_num_threads(1)

G = torch.Generator().manual_seed(3)
IDS = torch.randint(2, 120, (64, 10), generator=G)
LABELS = torch.randint(0, 3, (64,), generator=G)
PROBE = {"input_ids": IDS[:16], "attention_mask": torch.ones(16, 10, dtype=torch.long)}
CFG = TrainConfig(epochs=2, batch_size=8, lr=1e-2, warmup_ratio=0.0, precision="fp32", eval_every_steps=2,
                  save_every_steps=2, keep_checkpoints=20, max_grad_norm=1.0)  # 16 steps


def base_model():
    torch.manual_seed(0)
    return BertForSequenceClassification(BertConfig(vocab_size=120, hidden_size=32, num_hidden_layers=2,
                                                    num_attention_heads=4, intermediate_size=64,
                                                    max_position_embeddings=64, num_labels=3))


def scalora_model():
    method = ScaLoraMethod(ScaLoraConfig(r=2, merge_every=3, target_modules=["query", "value"]))
    return method.apply(base_model(), head_modules=["classifier"], peft_task_type=None), method


def new_run(path) -> RunDir:
    path.mkdir()
    return RunDir(path)


@torch.no_grad()
def probe_logits(model):
    model.eval()
    return model(**PROBE).logits.clone()


def merged(model):
    return torch.cat([m.merged.flatten() for m in model.modules() if isinstance(m, ScaLoraLinear)])


def hooks(validate, crash_at_step=None):
    calls = {"n": 0}

    def loss(model, batch):
        calls["n"] += 1
        if calls["n"] == crash_at_step:
            raise KeyboardInterrupt("simulated crash")
        return model(**batch).loss

    def batches(epoch):
        order = np.random.default_rng([7, epoch]).permutation(64)
        return [order[i:i + 8] for i in range(0, 64, 8)]

    return LoopHooks(batches=batches, loss=loss, validate=validate, metric="score", higher_is_better=True,
                     collate=lambda idx: {"input_ids": IDS[idx], "attention_mask": torch.ones(len(idx), 10, dtype=torch.long),
                                          "labels": LABELS[idx]})


def test_best_folder_and_adapter_hold_the_model_as_at_the_best_step(tmp_path):
    model, method = scalora_model()
    seen = []  # (probe logits, merged update) at each validation, every 2 steps
    scores = [0.1, 0.2, 0.9, 0.3, 0.4, 0.5, 0.6, 0.7]  # best at the 3rd validation: step 6 of 16

    def validate(m):
        seen.append((probe_logits(m), merged(m).clone()))
        return {"score": scores[len(seen) - 1], "loss": 0.0}

    state = fit(model, CFG, hooks(validate), run_callbacks(new_run(tmp_path / "run"), CFG, "score"), method=method)
    assert state["best_step"] == 6 and state["step"] == 16
    at_best, merged_at_best = seen[2]
    assert float(merged_at_best.abs().max()) > 0            # a merge (before step 4) is part of the best model
    assert not torch.equal(merged(model), merged_at_best)  # and later merges changed it again
    assert not torch.allclose(probe_logits(model), at_best, atol=1e-4)

    load_best(RunDir(tmp_path / "run"), model, method)
    torch.testing.assert_close(probe_logits(model), at_best, atol=0, rtol=0)

    method.save(model, tmp_path / "adapter")
    reloaded = ScaLoraMethod(ScaLoraConfig()).load(base_model(), tmp_path / "adapter")
    torch.testing.assert_close(probe_logits(reloaded), at_best, atol=0, rtol=0)
    merged_model = ScaLoraMethod(ScaLoraConfig()).merge(reloaded)  # and merged into plain weights
    torch.testing.assert_close(probe_logits(merged_model), at_best, atol=1e-5, rtol=0)


def test_resume_after_a_merge_matches_an_uninterrupted_run(tmp_path):
    def validate(m):  # a real function of the model, so both runs pick their best the same way
        return {"score": float(probe_logits(m)[:, 0].mean()), "loss": 0.0}

    full_model, full_method = scalora_model()
    full = new_run(tmp_path / "full")
    a = fit(full_model, CFG, hooks(validate), run_callbacks(full, CFG, "score"), method=full_method)

    cut_model, cut_method = scalora_model()
    cut = new_run(tmp_path / "cut")
    with pytest.raises(KeyboardInterrupt):  # dies during step 9: the last checkpoint is step 8, after merges at 4 and 7
        fit(cut_model, CFG, hooks(validate, crash_at_step=9), run_callbacks(cut, CFG, "score"), method=cut_method)
    assert float(merged(cut_model).abs().max()) > 0

    resumed_model, resumed_method = scalora_model()  # a fresh process would rebuild the model like this
    b = fit(resumed_model, CFG, hooks(validate), run_callbacks(cut, CFG, "score", resume=True), method=resumed_method)

    assert a["step"] == b["step"] == 16 and a["best_step"] == b["best_step"]
    losses = lambda run: [(r["step"], r["loss"]) for r in run.metrics() if r["split"] == "train"]  # noqa: E731
    assert losses(full) == losses(cut)
    ta, tb = full_method.trainable_state(full_model), resumed_method.trainable_state(resumed_model)
    assert ta.keys() == tb.keys() and any(k.endswith(".merged") for k in ta)
    assert all(torch.equal(ta[k], tb[k]) for k in ta)
    best_a = (full.best_dir / "model.safetensors").read_bytes()
    assert best_a == (cut.best_dir / "model.safetensors").read_bytes()
