"""Workload 2: LoRA chat SFT, SmolLM2-135M-Instruct on chitchat conversations, one epoch of --size.

  --impl trl       the trl docs way: SFTTrainer + peft LoraConfig on a "messages" dataset, trl's defaults
                   (bf16, gradient checkpointing, no packing, loss on all tokens); on a CPU without native bf16
                   bf16 is turned off (trl's default there would not finish: see run_trl)
  --impl trl-expert with what a practitioner turns on: packing (trl's best-fit decreasing, padding-free), bf16
                   only where the CPU has it, no gradient checkpointing (memory is not what limits a 135M model)
  --impl tunelab   tunelab's loop on the chat-chitchat-smollm2 recipe (bf16 autocast, packing, loss on
                   replies only)

Same split and training subset, LoRA r=16 alpha=32 dropout 0.05 on all 7 linear maps, AdamW lr 5e-4,
weight decay 0.01, cosine schedule with 5% warm-up, batch 8, max length 256, seed 42, one epoch; both
evaluated by the same code (mean cross-entropy of the replies, fp32) on the same validation conversations.
"""

from __future__ import annotations

import math

import numpy as np

from bench.common import SEED, decoder_train_flops, main, scratch_dir, step_clock, versions

VALIDATION = 32
BATCH = 8


def config(size: int, device: str = "cpu"):
    from tunelab.config.load import load_config

    return load_config("chat-chitchat-smollm2", {
        "data": {"max_train_samples": size, "max_eval_samples": VALIDATION},
        # The recipe's 512-token pieces are a CPU setting (README: leave it unset on GPUs).
        "train": {"epochs": 1, "device": device, **({"max_batch_tokens": None} if device == "cuda" else {})},
        "output": {"dir": scratch_dir() + "/run"},
    })


def data(cfg):
    from tunelab.tasks import make_task

    task = make_task(cfg)
    splits = task.load_splits()
    return splits, {s: task.conversations(getattr(splits, s)) for s in ("train", "validation")}


def validation_loss(model, cfg, convs) -> float:
    from transformers import AutoTokenizer

    from tunelab.models.catalog import resolve_model
    from tunelab.tasks import make_task

    task = make_task(cfg.model_copy(update={"eval": cfg.eval.model_copy(update={"batch_size": 8})}))
    task.tok = AutoTokenizer.from_pretrained(resolve_model(cfg.model.name))
    task.seq2seq = False
    return task.teacher_forced_loss(model, task.encode(convs))["loss"]


def run_tunelab(size: int, device: str = "cpu") -> dict:
    from bench.sentiment import session_fit
    from tunelab.session import Session

    cfg = config(size, device)
    session = Session.from_config(cfg, overwrite=True)
    session.prepare()
    task, trained, loss_tokens = session.task, [], [0]
    train = task.enc["train"]
    hooks = session.hooks()
    collate = hooks.collate

    def count(idx):
        trained.extend(int(train.lengths[i]) for i in idx)
        loss_tokens[0] += sum(sum(1 for t in train.labels[i][1:] if t != -100) for i in idx)
        return collate(idx)

    hooks.collate, hooks.validate = count, lambda m: {"loss": 0.0}
    state = session_fit(session, hooks)
    val = validation_loss(session.model, cfg, task.convs["validation"])
    return record("tunelab", session.precision, session.model, trained, loss_tokens[0], state["step"],
                  state["train_seconds"], val, session.splits)


def run_trl(size: int, device: str = "cpu", expert: bool = False) -> dict:
    """Written as a user following the trl SFTTrainer + PEFT docs would; `expert`: with the switches a
    practitioner adds for speed. trl defaults to bf16 autocast on any CPU; where the CPU has no native bf16
    (AVX2, AVX-512 without BF16) its matmuls are emulated, minutes for one 2048x2048 product, so a user
    there has to turn it off, and the default baseline does too (recorded as precision fp32)."""
    from datasets import Dataset
    from peft import LoraConfig
    from trl import SFTConfig, SFTTrainer

    from tunelab.models.catalog import resolve_model
    from tunelab.runtime import cpu_has_bf16

    cfg = config(size)
    splits, convs = data(cfg)
    ds = Dataset.from_dict({"messages": convs["train"]})
    batch = packed_batch(cfg, convs["train"]) if expert else BATCH
    steps = math.ceil(len(ds) / BATCH)
    args = SFTConfig(
        output_dir=scratch_dir(), per_device_train_batch_size=batch, num_train_epochs=1, learning_rate=5e-4,
        weight_decay=0.01, lr_scheduler_type="cosine", warmup_steps=round(0.05 * steps), max_grad_norm=1.0,
        max_length=cfg.model.max_length, seed=SEED, eval_strategy="no", save_strategy="no", report_to="none",
        disable_tqdm=True, use_cpu=device == "cpu",
        **({"bf16": False} if device == "cpu" and not cpu_has_bf16() else {}),
        **({"packing": True, "gradient_checkpointing": False} if expert else {}))
    peft_config = LoraConfig(r=16, lora_alpha=32, lora_dropout=0.05, task_type="CAUSAL_LM",
                             target_modules=["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"])

    clock = step_clock()
    trainer = SFTTrainer(model=resolve_model(cfg.model.name), args=args, train_dataset=ds, peft_config=peft_config,
                         callbacks=[clock])
    out = trainer.train()
    packed = "seq_lengths" in trainer.train_dataset.column_names  # bfd packing: one row holds several conversations
    trained = ([n for row in trainer.train_dataset["seq_lengths"] for n in row] if packed
               else [min(len(x), cfg.model.max_length) for x in trainer.train_dataset["input_ids"]])
    model = trainer.model
    val = validation_loss(model, cfg, convs["validation"])
    return record("trl-expert" if expert else "trl", "bf16" if args.bf16 else "fp32", model, trained,
                  sum(n - 1 for n in trained), out.global_step, clock.t.seconds, val, splits,
                  gradient_checkpointing=args.gradient_checkpointing, packing=args.packing)


def packed_batch(cfg, convs) -> int:
    """Packed rows per step so that a step still covers about BATCH conversations (the same number of
    optimizer steps and the same effective batch as the other sides): a row of max_length tokens holds
    max_length / mean conversation length of them."""
    from transformers import AutoTokenizer

    from tunelab.models.catalog import resolve_model

    tok = AutoTokenizer.from_pretrained(resolve_model(cfg.model.name))
    lengths = [min(len(tok.apply_chat_template(c, tokenize=True, return_dict=True)["input_ids"]), cfg.model.max_length)
               for c in convs]
    per_row = cfg.model.max_length / (sum(lengths) / len(lengths))
    return max(1, round(BATCH / per_row))


def record(impl, precision, model, lengths, loss_tokens, steps, seconds, val_loss, splits, **extra) -> dict:
    cfg = model.get_base_model().config if hasattr(model, "get_base_model") else model.config
    flops = decoder_train_flops(cfg, lengths, loss_tokens, lora_r=16)
    return {"workload": "chat", "impl": impl, "size": len(splits.train), "precision": precision, "steps": steps,
            "batch_size": BATCH, "train_seconds": round(seconds, 3), "examples": len(lengths),
            "real_tokens": int(sum(lengths)), "loss_tokens": int(loss_tokens), "examples_per_s": len(lengths) / seconds,
            "tokens_per_s": sum(lengths) / seconds, "model_flops": flops, "flops_per_s": flops / seconds,
            "val_loss": val_loss, "validation_examples": len(splits.validation), "versions": versions(), **extra}


if __name__ == "__main__":
    main(__doc__, ["trl", "trl-expert", "tunelab"], lambda impl, size, device: (
        run_tunelab(size, device) if impl == "tunelab" else run_trl(size, device, expert=impl == "trl-expert")))
