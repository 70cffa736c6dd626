"""Measured export table for the real runs (not a unit test; run under /work/cpu, one part at a time).

    python bench/export_table.py classify --variants adapter,fp32,bf16        # MiniLM sentiment run
    python bench/export_table.py classify --variants fp16,int8-dynamic,nf4,onnx
    python bench/export_table.py chat                                           # SmolLM2 chat run

Each variant is exported with `tunelab export` (into --work, never into the run folder), then measured:
size on disk (MiB, every file the variant needs: weights + config + tokenizer, plus model.onnx), latency
(median ms of a batch of 32 test texts and of a single text, tokenization included, 2 threads), and
accuracy / macro-F1 on the run's full test split. `chat` measures greedy generation tokens/s of the
merged export vs the unmerged adapter (same prompts, same max_new_tokens, fp32, batch 1). Results are
merged into bench/results/<cpu kind>/export.json, and export.md is rewritten from it."""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from pathlib import Path

import numpy as np
import torch

from bench.common import machine, results_dir
from tunelab.data import load_splits
from tunelab.export.folder import folder_mb
from tunelab.export.quantize import load_export, state_mb
from tunelab.metrics.classification import classification_metrics
from tunelab.session import Predictor
from tunelab.workflows.export import export_run

SENTIMENT = "/work/main/runs/sentiment-lora-20261123-194401"
CHAT = "/work/main/runs/chat-chitchat-smollm2-20261123-213400"
VARIANTS = {  # name: export_run kwargs (None: the unmerged adapter, loaded by tunelab)
    "adapter": None, "fp32": {}, "bf16": {"dtype": "bf16"}, "fp16": {"dtype": "fp16"},
    "int8-dynamic": {"quantize": "int8-dynamic"}, "nf4": {"quantize": "nf4"}, "onnx": {"onnx": True},
}
THREADS = 2


def median_ms(fn, repeats: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t) * 1000)
    return round(statistics.median(times), 2)


def predictor(name: str, folder: Path | None, run: str):
    """(tokenizer, texts -> logits numpy) for one variant."""
    if name == "adapter":
        lr = Predictor.from_run(run)
        tok, model = lr.tokenizer, lr.model
    elif name == "onnx":
        import onnxruntime as ort
        from transformers import AutoTokenizer

        opts = ort.SessionOptions()
        opts.intra_op_num_threads = THREADS
        sess = ort.InferenceSession(str(folder / "model.onnx"), opts, providers=["CPUExecutionProvider"])
        tok = AutoTokenizer.from_pretrained(folder)

        def run_onnx(texts):
            enc = tok(texts, padding=True, truncation=True, max_length=128, return_tensors="np")
            return sess.run(["logits"], {"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"]})[0]
        return tok, run_onnx
    else:
        tok, model, _ = load_export(folder)

    @torch.no_grad()
    def run_torch(texts):
        enc = tok(texts, padding=True, truncation=True, max_length=128, return_tensors="pt")
        return model(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"]).logits.float().numpy()
    return tok, run_torch


def classify(variants: list[str], run: str, work: Path, limit: int | None) -> dict:
    lr_cfg = Predictor.from_run(run)  # labels + config; freed below
    cfg, labels = lr_cfg.cfg, lr_cfg.labels
    del lr_cfg
    test = load_splits(cfg.data, cfg.task.labels).test
    if limit:
        test = test.sample(limit, random_state=0)
    texts = test["text"].tolist()
    y = np.array([labels.index(v) for v in test["label"]])
    order = np.argsort([len(t) for t in texts])  # length-sorted batches: little padding, as in tunelab eval
    out = {}
    for name in variants:
        folder = None
        rec = {}
        if VARIANTS[name] is not None:
            folder = work / f"minilm-{name}"
            rec = export_run(run, merge=True, out=str(folder), overwrite=True, **VARIANTS[name])
        torch.set_num_threads(THREADS)
        _, fn = predictor(name, folder, run)
        t = time.perf_counter()
        preds = np.empty(len(texts), dtype=np.int64)
        for i in range(0, len(texts), 32):
            idx = order[i:i + 32]
            preds[idx] = fn([texts[j] for j in idx]).argmax(-1)
        eval_s = time.perf_counter() - t
        m = classification_metrics(y, preds, labels)
        row = {
            "size_mb": folder_mb(folder) if folder else folder_mb(Path(run) / "adapter"),
            "latency_ms_batch32": median_ms(lambda: fn(texts[:32]), 5),
            "latency_ms_single": median_ms(lambda: fn(texts[32:33]), 20),
            "accuracy": round(m["accuracy"], 4), "macro_f1": round(m["macro_f1"], 4), "n_test": len(texts),
            "test_eval_s": round(eval_s, 1),
        }
        if name == "adapter":
            row["note"] = "unmerged PEFT adapter on the fp32 base (size: adapter folder only; the base model is needed too)"
        if rec:
            row["export_check_max_abs_diff"] = rec["check"]["max_abs_diff"]
            row["export_seconds"] = rec["seconds"]
        if "int8" in rec:
            row["int8_quantized_state_mb"] = rec["int8"]["quantized_state_mb"]
            row["note"] = "stored as fp32 safetensors, quantized at load (load-time transform); size_mb is what is stored"
        if "onnx" in rec:
            row["onnx_vs_pytorch_max_abs_diff"] = rec["onnx"]["max_abs_diff"]
            row["note"] = "size_mb includes the safetensors folder; model.onnx alone: " + f"{folder_mb(folder, '*.onnx')} MiB"
        out[name] = row
        print(name, json.dumps(row), flush=True)
    return out


CHAT_PROMPTS = ["Hi! How was your weekend?", "What kind of music do you like?", "I just adopted a puppy.",
                "Any tips for staying focused while studying?", "What's your favorite food?", "I'm bored, talk to me."]


def chat(run: str, work: Path, max_new_tokens: int) -> dict:
    from transformers import AutoModelForCausalLM

    torch.set_num_threads(THREADS)
    lr = Predictor.from_run(run)
    tok = lr.tokenizer
    prompts = [tok.apply_chat_template([{"role": "user", "content": p}], add_generation_prompt=True, tokenize=False)
               for p in CHAT_PROMPTS]

    @torch.no_grad()
    def tokens_per_s(model) -> tuple[float, list[list[int]]]:
        model.eval()
        outs, n, secs = [], 0, 0.0
        for p in prompts:
            enc = tok(p, return_tensors="pt", add_special_tokens=False)
            t = time.perf_counter()
            ids = model.generate(**enc, max_new_tokens=max_new_tokens, min_new_tokens=max_new_tokens, do_sample=False,
                                 temperature=None, top_p=None, top_k=None, pad_token_id=tok.pad_token_id)
            secs += time.perf_counter() - t
            new = ids[0, enc["input_ids"].shape[1]:].tolist()
            outs.append(new)
            n += len(new)
        return round(n / secs, 2), outs

    unmerged_tps, unmerged_out = tokens_per_s(lr.model)
    del lr
    folder = work / "smollm2-chat-fp32"
    rec = export_run(run, merge=True, out=str(folder), overwrite=True)
    merged = AutoModelForCausalLM.from_pretrained(folder)
    merged_tps, merged_out = tokens_per_s(merged)
    same = sum(a == b for a, b in zip(unmerged_out, merged_out))
    res = {"prompts": len(prompts), "max_new_tokens": max_new_tokens, "batch": 1, "dtype": "fp32", "greedy": True,
           "unmerged_tokens_per_s": unmerged_tps, "merged_tokens_per_s": merged_tps,
           "speedup": round(merged_tps / unmerged_tps, 2), "identical_generations": f"{same}/{len(prompts)}",
           "merged_size_mb": folder_mb(folder), "export_check_max_abs_diff": rec["check"]["max_abs_diff"],
           "export_seconds": rec["seconds"]}
    print("chat", json.dumps(res), flush=True)
    return res


def cpu_line(cpu) -> str:
    """A machine() record (older results: the model name alone) as text."""
    if isinstance(cpu, dict):
        return f"{cpu['cpu']} ({' '.join(cpu['cpu_flags']) or 'no AVX2'}, {cpu['cores']} cores)"
    return str(cpu)


def half_precision_line(c: dict) -> str:
    """What fp16 and bf16 cost against fp32 on the CPU measured, from the numbers themselves: the same
    format is several times slower than fp32 on one CPU (emulated: Zen 5 fp16) and on par on another
    (an AVX512-FP16 Xeon), so no fixed sentence fits every kind."""
    if "fp32" not in c:
        return ""
    base = c["fp32"]["latency_ms_batch32"]
    parts = [f"{name} {c[name]['latency_ms_batch32'] / base:.2f}x" for name in ("fp16", "bf16") if name in c]
    return f"Batch latency against fp32 on this CPU: {', '.join(parts)}. " if parts else ""


def write_markdown(data: dict) -> None:
    lines = ["# Export: size, latency and accuracy per format (measured)", ""]
    c = data.get("classify", {})
    if c:
        meta = data.get("classify_meta", {})
        lines += [f"Run `{meta.get('run')}` (MiniLM + LoRA, 3-class tweet sentiment), {meta.get('test')}; "
                  f"CPU: {cpu_line(meta.get('cpu'))}, {THREADS} threads. Latency: median over repeats of one forward pass "
                  "including tokenization (batch of 32 test texts: 5 repeats; one text: 20 repeats).", "",
                  "| variant | size on disk (MiB) | ms / batch of 32 | ms / single text | accuracy | macro-F1 | note |",
                  "|---|---:|---:|---:|---:|---:|---|"]
        for name in VARIANTS:
            if name in c:
                r = c[name]
                lines.append(f"| {name} | {r['size_mb']:.1f} | {r['latency_ms_batch32']:.1f} | {r['latency_ms_single']:.1f} | "
                             f"{r['accuracy']:.4f} | {r['macro_f1']:.4f} | {r.get('note', '')} |")
        lines += ["", half_precision_line(c) + "nf4 quantizes the Linear layers only: the word embeddings "
                  "(30,522 x 384) and the classifier head stay in full precision, hence ~52 MiB rather than ~12. "
                  "int8-dynamic stores fp32 weights and quantizes at load; `int8_quantized_state_mb` in export.json "
                  "is its in-memory int8 size. Accuracy / macro-F1 of every variant are on the full test split "
                  f"({c.get('fp32', {}).get('n_test', '?')} examples).", ""]
    g = data.get("chat")
    if g:
        lines += ["## Generation speed: merged export vs unmerged adapter", "",
                  f"Run `{data.get('chat_meta', {}).get('run')}` (SmolLM2-135M-Instruct + LoRA r=16 on all 7 projections), "
                  f"{g['prompts']} chat prompts, greedy, exactly {g['max_new_tokens']} new tokens each, batch 1, fp32, {THREADS} threads.", "",
                  "| model | tokens/s |", "|---|---:|",
                  f"| unmerged adapter (PeftModel) | {g['unmerged_tokens_per_s']:.2f} |",
                  f"| merged export (plain transformers) | {g['merged_tokens_per_s']:.2f} |", "",
                  f"Speed-up {g['speedup']}x; identical greedy generations: {g['identical_generations']}; merged folder "
                  f"{g['merged_size_mb']:.0f} MiB.", ""]
    (results_dir() / "export.md").write_text("\n".join(lines), encoding="utf-8")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("part", choices=["classify", "chat", "markdown"])
    ap.add_argument("--variants", default=",".join(VARIANTS))
    ap.add_argument("--run", default=None)
    ap.add_argument("--work", default="/tmp/tunelab-export-bench")
    ap.add_argument("--limit", type=int, default=None, help="fixed random subsample of the test split")
    ap.add_argument("--max-new-tokens", type=int, default=48)
    a = ap.parse_args()
    path = results_dir() / "export.json"
    data = json.loads(path.read_text()) if path.is_file() else {}
    work = Path(a.work)
    cpu = machine()
    if a.part == "classify":
        run = a.run or SENTIMENT
        data.setdefault("classify", {}).update(classify(a.variants.split(","), run, work, a.limit))
        data["classify_meta"] = {"run": run, "cpu": cpu, "threads": THREADS,
                                 "test": f"fixed subsample of {a.limit} test examples" if a.limit else "full test split"}
    elif a.part == "chat":
        run = a.run or CHAT
        data["chat"] = chat(run, work, a.max_new_tokens)
        data["chat_meta"] = {"run": run, "cpu": cpu}
    results_dir().mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=2) + "\n")
    write_markdown(data)


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    main()
