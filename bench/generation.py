"""Workload 3: evaluation by generation, SmolLM2-135M-Instruct writing aclsum outcome summaries for --size
prompts (greedy, the summarize-aclsum-smollm2 recipe's settings: 80 new tokens, prompts cut to 688 tokens).

  --impl loop      a plain per-example `model.generate` loop (fp32, one prompt at a time)
  --impl tunelab   tunelab's tasks/generation.py (length-sorted batches of 8, left padding, KV cache,
                   weights held in bf16 while generating, models/cpu_kernels.py decode attention)

Tokens/s counts the generated tokens (re-tokenized outputs, both sides counted the same way).
"""

from __future__ import annotations

import torch

from bench.common import Timer, main, versions


def prompts_and_model(size: int, cpu_kernels: bool = True):
    from tunelab.config.load import load_config
    from tunelab.tasks import make_task
    from tunelab.tasks.prompts import Renderer

    cfg = load_config("summarize-aclsum-smollm2", {"model": {"cpu_kernels": cpu_kernels}})
    task = make_task(cfg)
    convs = task.conversations(task.load_splits().test)[:size]
    tok, model = task.load_model()
    renderer = Renderer(tok, task.seq2seq)
    prompts = [renderer.render(c[:-1], add_generation_prompt=True) for c in convs]
    refs = [c[-1]["content"] for c in convs]
    return cfg, tok, model, prompts, refs


def run(impl: str, size: int, device: str = "cpu") -> dict:
    from tunelab.tasks.generation import generate_texts, generation_kwargs
    from tunelab.runtime import resolve_precision

    # The loop is what a user writes with plain transformers: stock attention and ops.
    cfg, tok, model, prompts, refs = prompts_and_model(size, cpu_kernels=impl == "tunelab")
    model.to(device).eval()
    gen = cfg.generate
    budget = cfg.model.max_length - gen.max_new_tokens
    if impl == "tunelab":
        precision = resolve_precision(cfg.train.precision, device)
        with Timer() as t:
            outputs = generate_texts(model, tok, prompts, gen, seq2seq=False, precision=precision,
                                     max_length=cfg.model.max_length)
    else:
        precision = "fp32"
        tok.truncation_side = "left"
        outputs = []
        with Timer() as t, torch.no_grad():
            for p in prompts:
                enc = tok(p, return_tensors="pt", truncation=True, max_length=budget, add_special_tokens=False).to(device)
                ids = model.generate(**enc, max_new_tokens=gen.max_new_tokens, do_sample=False,
                                     pad_token_id=tok.pad_token_id)
                outputs.append(tok.decode(ids[0, enc["input_ids"].shape[1]:], skip_special_tokens=True).strip())
    new_tokens = sum(len(tok(o, add_special_tokens=False)["input_ids"]) for o in outputs)
    prompt_tokens = sum(min(budget, len(tok(p, add_special_tokens=False)["input_ids"])) for p in prompts)
    from tunelab.metrics import text as tm

    rouge = tm.rouge(outputs, refs)
    return {"workload": "generation", "impl": impl, "size": len(prompts), "precision": precision,
            "batch_size": gen.batch_size if impl == "tunelab" else 1, "max_new_tokens": gen.max_new_tokens,
            "gen_seconds": round(t.seconds, 3), "train_seconds": round(t.seconds, 3), "new_tokens": new_tokens,
            "prompt_tokens": prompt_tokens, "tokens_per_s": new_tokens / t.seconds, "examples_per_s": len(prompts) / t.seconds,
            "rougeL": 100 * rouge["rougeL"], "versions": versions(), "outputs": outputs}


if __name__ == "__main__":
    main(__doc__, ["loop", "tunelab"], run)
