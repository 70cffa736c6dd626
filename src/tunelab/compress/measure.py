"""One row of the compression table, measured in a fresh process so that its peak memory is its own:

    python -m tunelab.compress.measure FOLDER --run RUN [--int8] [--threads 2] --out row.json

FOLDER is any model folder with tunelab_export.json (an export, a pruned model, a student's export);
--int8 applies torch's dynamic int8 quantization at load, as `load_export` does for int8 exports.
Measured: parameters (and non-zero ones), weights on disk, latency of one input and of a batch
(median of repeated calls, same threads, after warm-up), peak resident memory of the process, and
the run's test metric (tasks/*: `test_quality`)."""

from __future__ import annotations

import argparse
import dataclasses
import json
import statistics
import time
from pathlib import Path

import torch


def median_ms(fn, reps: int, warmup: int = 2) -> float:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(reps):
        t = time.perf_counter()
        fn()
        times.append(1000 * (time.perf_counter() - t))
    return round(statistics.median(times), 2)


def measure(folder: str, run: str, int8: bool = False, threads: int = 2, batch: int = 32, reps: int = 10) -> dict:
    from tunelab.export.folder import folder_mb
    from tunelab.export.quantize import int8_dynamic, load_export, state_mb
    from tunelab.runs.rundir import RunDir
    from tunelab.runtime import peak_rss_mb, setup_threads
    from tunelab.tasks import make_task
    from tunelab.tasks.generation import generation_kwargs

    setup_threads(threads)
    t0 = time.perf_counter()
    tok, model, info = load_export(folder)
    params = sum(p.numel() for p in model.parameters())
    nonzero = sum(int((p != 0).sum()) for p in model.parameters())
    size = folder_mb(Path(folder), "*.safetensors")
    if int8 and info["quantization"] == "none":
        model = int8_dynamic(model)
        size = state_mb(model)  # what the int8 weights take (made at load; the folder stores fp32)
    load_s = time.perf_counter() - t0

    cfg = RunDir.open(run).config()
    task = make_task(cfg)
    splits = task.load_splits()
    splits = dataclasses.replace(splits, train=splits.train.head(64))  # only test is scored
    dtype = next(model.parameters()).dtype if any(True for _ in model.parameters()) else torch.float32
    task.prepare(tok, splits, "bf16" if dtype == torch.bfloat16 else "fp32")
    t = time.perf_counter()
    quality = task.test_quality(model)
    eval_s = time.perf_counter() - t

    texts = task.probe_inputs(batch)
    model.eval()
    with torch.no_grad():
        if task.kind == "classification":
            one = tok(texts[:1], return_tensors="pt", truncation=True, max_length=cfg.model.max_length)
            many = tok(texts, return_tensors="pt", padding=True, truncation=True, max_length=cfg.model.max_length)
            single = median_ms(lambda: model(**one), reps * 5)
            batched = median_ms(lambda: model(**many), reps)
            unit = "forward"
        else:  # generation: 32 new tokens, greedy, KV cache
            gen = dict(generation_kwargs(tok, cfg.generate.model_copy(update={"max_new_tokens": 32, "do_sample": False,
                                                                                 "num_beams": 1})), min_new_tokens=32)
            tok.padding_side = "left"
            one = tok(texts[:1], return_tensors="pt", add_special_tokens=False)
            many = tok(texts[:8], return_tensors="pt", padding=True, add_special_tokens=False)
            single = median_ms(lambda: model.generate(**one, **gen), max(3, reps // 3), 1)
            batched = median_ms(lambda: model.generate(**many, **gen), max(3, reps // 3), 1)
            batch, unit = 8, "generate 32 tokens"
    metric = task.quality_metric
    return {"folder": str(folder), "int8": int8, "quantization": "int8-dynamic" if int8 else info["quantization"],
            "dtype": str(dtype).replace("torch.", ""), "parameters": params, "nonzero_parameters": nonzero,
            "weights_mb": size, "latency_single_ms": single, "latency_batch_ms": batched, "batch": batch, "latency_unit": unit,
            "peak_rss_mb": round(peak_rss_mb(), 1), "metric": metric, "value": quality[metric],
            "quality": {k: v for k, v in quality.items() if isinstance(v, (int, float))},
            "threads": torch.get_num_threads(), "load_seconds": round(load_s, 1), "eval_seconds": round(eval_s, 1)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("folder")
    ap.add_argument("--run", required=True)
    ap.add_argument("--int8", action="store_true")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", required=True)
    a = ap.parse_args()
    row = measure(a.folder, a.run, a.int8, a.threads)
    Path(a.out).write_text(json.dumps(row, indent=2), encoding="utf-8")


if __name__ == "__main__":
    main()
