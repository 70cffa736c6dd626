"""`tunelab export`: a finished run -> a standalone model folder plain transformers loads.

Order: check the flags and the target folder (cheap, before any model loads) -> load the run (base +
adapter) -> record its logits on the run's own test inputs -> merge the adapter into the base weights -> cast /
quantize -> write weights, tokenizer, generation config, model card and tunelab_export.json into a temp
folder -> check the final model against the recorded logits -> optional ONNX -> rename into place."""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

import torch

from tunelab import __version__
from tunelab.console import console, status
from tunelab.errors import TunelabError
from tunelab.export.card import model_card
from tunelab.export.folder import MARKER, check_target, folder_mb, staging
from tunelab.models.heads import FRESH_MODULES
from tunelab.export.quantize import AUTO_CLASSES, DTYPES, QUANTIZATIONS, int8_dynamic, nf4_config, state_mb
from tunelab.methods import get_method
from tunelab.runs.io import atomic_write_json
from tunelab.runs.rundir import RunDir
from tunelab.session import Predictor
from tunelab.tasks import make_task

#: how many of the run's test inputs the merged/cast/quantized model must reproduce the outputs on
PROBE_COUNT = 8


def default_out(run: Path, dtype: str, quantize: str, onnx: bool) -> Path:
    return run / ("export-" + dtype + ("" if quantize == "none" else f"-{quantize}") + ("-onnx" if onnx else ""))


def check_flags(merge: bool, dtype: str, quantize: str, onnx: bool, task) -> None:
    if not merge:
        raise TunelabError("export writes a merged standalone model: pass --merge "
                           "(the unmerged adapter is already RUN/adapter, a folder plain peft loads)")
    if dtype not in DTYPES:
        raise TunelabError(f"--dtype must be one of {', '.join(DTYPES)}, not '{dtype}'")
    if quantize not in QUANTIZATIONS:
        raise TunelabError(f"--quantize must be one of {', '.join(QUANTIZATIONS)}, not '{quantize}'")
    if onnx and not task.onnx_export:
        raise TunelabError(f"--onnx exports classification models only; this run's task is {task.name}")
    if onnx and (dtype != "fp32" or quantize != "none"):
        raise TunelabError("--onnx exports the fp32 graph; drop --dtype/--quantize (or export them separately)")


@torch.no_grad()
def probe_logits(model, tok, seq2seq: bool, probes: list[str]) -> torch.Tensor:
    enc = tok(probes, padding=True, truncation=True, max_length=256, return_tensors="pt")
    kwargs = {"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"]}
    if seq2seq:
        kwargs["decoder_input_ids"] = enc["input_ids"][:, :8]
    return model(**kwargs).logits.float()


def export_run(run_path: str, *, merge: bool = True, dtype: str = "fp32", quantize: str = "none", onnx: bool = False,
               out: str | None = None, overwrite: bool = False) -> dict:
    """Write the export folder; return its tunelab_export.json record."""
    t0 = time.time()
    run = RunDir.open(run_path)
    if not run.complete:
        raise TunelabError(f"run '{run_path}' has not finished (no summary.json); finish it with "
                           f"`tunelab train --resume {run_path}` before exporting")
    cfg = run.config()
    check_flags(merge, dtype, quantize, onnx, make_task(cfg))
    method = get_method(cfg.method.name)(cfg.method)
    method.check_mergeable()  # methods know before anything loads
    out_dir = Path(out) if out else default_out(run.path, dtype, quantize, onnx)
    check_target(out_dir, overwrite)

    with status("Loading the model + adapter"):
        predictor = Predictor.from_run(run_path)
    tok, seq2seq = predictor.tokenizer, predictor.seq2seq
    kind = "classification" if predictor.kind == "classification" else ("seq2seq" if seq2seq else "causal")
    probes = predictor.task.probe_inputs(PROBE_COUNT)
    reference = probe_logits(predictor.model, tok, seq2seq, probes)
    with status("Merging the adapter into the base weights"):
        model = method.merge(predictor.model).eval()
    merge_diff = float((probe_logits(model, tok, seq2seq, probes) - reference).abs().max())

    record = {"source_run": str(run.path), "tunelab": __version__, "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
              "base_model": cfg.model.name, "method": cfg.method.name, "task": cfg.task.type,
              "auto_class": AUTO_CLASSES[kind], "merged": True, "dtype": dtype, "quantization": quantize}
    with staging(out_dir, overwrite) as tmp:
        if quantize == "nf4":
            model = _nf4(model, tmp, dtype, kind, method.fresh_modules(predictor.task.head_modules(model)))
        else:
            model.to(DTYPES[dtype])
        with status(f"Writing {out_dir}"):
            model.save_pretrained(str(tmp), safe_serialization=True)
            tok.save_pretrained(str(tmp))
        if quantize == "int8-dynamic":
            model = int8_dynamic(model)
            record["int8"] = {"stored_as": f"{dtype} safetensors; quantized at load time (load-time transform)",
                              "transform": "torch.ao.quantization.quantize_dynamic(model.float(), {torch.nn.Linear}, dtype=torch.qint8)",
                              "quantized_state_mb": state_mb(model)}
        diff = float((probe_logits(model, tok, seq2seq, probes) - reference).abs().max())
        record["check"] = {"inputs": len(probes), "source": "the run's test split", "merge_max_abs_diff": merge_diff,
                           "max_abs_diff": diff}
        if onnx:
            from tunelab.export.onnx import export_onnx

            with status("Exporting ONNX and checking it with onnxruntime"):
                record["onnx"] = export_onnx(model, tok, probes, tmp)
        record["sizes_mb"] = {"weights": folder_mb(tmp, "*.safetensors"), "onnx": folder_mb(tmp, "*.onnx"), "total": 0.0}
        summary = run.read_json("summary.json") or {}
        (tmp / "README.md").write_text(model_card(cfg, summary, record), encoding="utf-8")
        record["sizes_mb"]["total"] = folder_mb(tmp) + 0.01  # + the record itself (a few KB)
        record["seconds"] = round(time.time() - t0, 1)
        atomic_write_json(tmp / MARKER, record)
    console.print(f"Exported [bold]{out_dir}[/] ({record['sizes_mb']['weights']:.1f} MB weights, {dtype}, "
                  f"quantization {quantize}); max abs logit diff vs the unmerged run: {diff:.2e}"
                  + (f"; ONNX vs PyTorch: {record['onnx']['max_abs_diff']:.2e}" if onnx else ""))
    return record


def _nf4(model, tmp: Path, dtype: str, kind: str, fresh: list[str]):
    """Quantize through transformers' own bitsandbytes path: save the merged weights to a scratch folder
    and reload them with an NF4 config, so the result saves/loads like any bnb 4-bit checkpoint."""
    import transformers

    scratch = tmp / ".merged"
    model.to(DTYPES[dtype]).save_pretrained(str(scratch), safe_serialization=True)
    skip = sorted(set(FRESH_MODULES) | set(fresh))  # fresh heads stay in full precision
    try:
        with status("Quantizing to NF4 (bitsandbytes)"):
            q = getattr(transformers, AUTO_CLASSES[kind]).from_pretrained(
                str(scratch), quantization_config=nf4_config(DTYPES[dtype], skip), dtype=DTYPES[dtype], device_map="cpu")
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return q.eval()


def read_record(folder: str | Path) -> dict:
    return json.loads((Path(folder) / MARKER).read_text(encoding="utf-8"))
