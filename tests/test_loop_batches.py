"""How the loop forms a step's gradient: micro-batches (grad_accum) and token-budget pieces
(train.max_batch_tokens) must add up to the gradient of one big batch. A LoRA'd tiny Llama trained by
the real loop (train/loop.py fit) on chat conversations whose replies differ a lot in length, so that
weighting pieces by examples instead of by target tokens would give a different loss."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from peft import LoraConfig, get_peft_model
from transformers import LlamaForCausalLM

from tunelab.config import load_config
from tunelab.config.schema import TrainConfig
from tunelab.runs.rundir import RunDir
from tunelab.train.callbacks import MetricsLog
from tunelab.train.loop import LoopHooks, fit, split_rows

from conftest import bound_task

SHORT = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hey."}]
LONG = [{"role": "user", "content": "Tell me about rivers"},
        {"role": "assistant", "content": "Rivers carry water from hills to the sea, shaping valleys, feeding "
                                         "farms and towns, and moving sand and stones along their beds for ages."}]
CONVS = [SHORT, LONG, SHORT, LONG]


def train_one_step(tiny_llama, smol_tok, tmp_path, packing: bool, **train) -> dict:
    torch.manual_seed(0)
    model = get_peft_model(LlamaForCausalLM.from_pretrained(tiny_llama),
                           LoraConfig(r=4, lora_dropout=0.0, target_modules=["q_proj", "v_proj"], task_type="CAUSAL_LM"))
    for n, p in model.named_parameters():  # non-zero B so every LoRA weight gets a gradient
        if "lora_B" in n:
            torch.nn.init.normal_(p, std=0.1)
    cfg = load_config(None, ["task.type=chat", "model.max_length=64"])
    task = bound_task(cfg, smol_tok)
    enc = task.encode(CONVS)
    cfg_train = TrainConfig(epochs=1, max_steps=1, lr=1e-3, warmup_ratio=0.0, precision="fp32", **train)
    hooks = LoopHooks(
        batches=lambda epoch: [np.array([i, i + 1]) for i in range(0, 4, 2)] if train.get("grad_accum") == 2
        else [np.arange(4)],
        collate=lambda idx: task.collate(idx, enc, packing=packing),
        loss=task.loss, weight=task.loss_weight, validate=lambda m: {"loss": 0.0})
    (tmp_path / "run").mkdir(parents=True)
    run = RunDir(tmp_path / "run")
    fit(model, cfg_train, hooks, [MetricsLog(run)])
    return next(r for r in run.metrics() if r["split"] == "train")


@pytest.mark.parametrize("packing", [False, True])
def test_pieces_and_micro_batches_give_the_gradient_of_one_batch(tiny_llama, smol_tok, tmp_path, packing):
    whole = train_one_step(tiny_llama, smol_tok, tmp_path / "whole", packing)
    pieces = train_one_step(tiny_llama, smol_tok, tmp_path / "pieces", packing, max_batch_tokens=1)  # a row each
    accum = train_one_step(tiny_llama, smol_tok, tmp_path / "accum", packing, grad_accum=2, batch_size=2)
    for other in (pieces, accum):
        assert other["loss"] == pytest.approx(whole["loss"], rel=1e-5)
        assert other["grad_norm"] == pytest.approx(whole["grad_norm"], rel=1e-5)


def test_target_tokens_differ_enough_that_example_weighting_would_show(smol_tok):
    """Guards the test above: the short and long replies have very different target-token counts."""
    cfg = load_config(None, ["task.type=chat", "model.max_length=256"])
    task = bound_task(cfg, smol_tok)
    enc = task.encode(CONVS)
    short, long = (task.loss_weight(task.collate([i], enc, packing=False)) for i in (0, 1))
    assert long >= 4 * short


def test_split_rows_caps_tokens_and_keeps_every_row_once():
    batch = {"input_ids": torch.arange(5 * 7).view(5, 7), "labels": torch.arange(5 * 7).view(5, 7) + 100}
    pieces = split_rows(batch, 15)  # 2 rows of 7 per piece
    assert [p["input_ids"].shape[0] for p in pieces] == [2, 2, 1]
    assert torch.equal(torch.cat([p["labels"] for p in pieces]), batch["labels"])
    assert split_rows(batch, None) == [batch] and split_rows(batch, 35) == [batch]
    assert [p["input_ids"].shape[0] for p in split_rows(batch, 3)] == [1] * 5  # a row over budget runs alone


def test_length_grouped_batches_put_the_widest_batch_first_and_keep_every_example_once():
    from tunelab.tasks.batching import length_grouped_batches

    lengths = np.random.default_rng(0).integers(3, 80, size=1000)
    for seed in range(5):
        batches = length_grouped_batches(lengths, 32, np.random.default_rng(seed), True)
        padded = [len(b) * lengths[b].max() for b in batches]
        assert padded[0] == max(padded)
        assert sorted(np.concatenate(batches).tolist()) == list(range(1000))
    # Seeds still shuffle the rest.
    a, b = (length_grouped_batches(lengths, 32, np.random.default_rng(s), True) for s in (1, 2))
    assert [x.tolist() for x in a[1:]] != [x.tolist() for x in b[1:]]
