"""`tunelab prune RUN` and `tunelab distill RUN`: from a finished run to a smaller model.

Both start from the run's merged (dense, fp32) model, as `tunelab export` does, and never touch the
run itself: a pruned model is written to its own folder (atomically, like an export); a distilled
student is a new run folder."""

from __future__ import annotations

import shutil
import time
from pathlib import Path

import torch

from tunelab import __version__
from tunelab.compress import prune as P
from tunelab.compress.distill import DistillSession, check_same_vocabulary, check_settings
from tunelab.config.load import resolve_raw, validate_config
from tunelab.console import console, status
from tunelab.errors import TunelabError
from tunelab.export.folder import MARKER, check_target, folder_mb, staging
from tunelab.export.quantize import AUTO_CLASSES
from tunelab.methods import get_method
from tunelab.models.state import count_parameters
from tunelab.runs.io import atomic_write_json
from tunelab.runs.rundir import RunDir
from tunelab.session import Predictor, Session

CRITERIA = ("magnitude", "wanda", "structured")
LAYER_CHOICES = ("influence", "spaced")


def finished(run_path: str | Path) -> RunDir:
    run = RunDir.open(run_path)
    if not run.complete:
        raise TunelabError(f"run '{run_path}' has not finished (no summary.json); finish it with "
                           f"`tunelab train --resume {run_path}` first")
    return run


def merged(run: RunDir) -> tuple[Predictor, torch.nn.Module]:
    """The run's predictor and its model with the adapter folded in (fp32, eval mode)."""
    cfg = run.config()
    method = get_method(cfg.method.name)(cfg.method)
    method.check_mergeable()
    with status("Loading the model + adapter"):
        predictor = Predictor.from_run(run.path)
    with status("Merging the adapter into the base weights"):
        model = method.merge(predictor.model).float().eval()
    return predictor, model


def calibration(predictor: Predictor, n: int) -> list[dict]:
    """About n examples of the run's own training split, as model-input batches of 16."""
    task = predictor.task
    task.prepare(predictor.tokenizer, task.load_splits(), "fp32")
    picked, out = 0, []
    for idx in task.batches(0):
        if picked >= n:
            break
        idx = idx[: min(16, n - picked)]
        out.append({k: v for k, v in task.collate(idx).items() if k != "labels"})
        picked += len(idx)
    return out


def auto_class(predictor: Predictor) -> str:
    kind = "classification" if predictor.kind == "classification" else ("seq2seq" if predictor.seq2seq else "causal")
    return AUTO_CLASSES[kind]


def write_folder(model, tok, out: Path, record: dict, overwrite: bool) -> dict:
    """A plain transformers model folder + tunelab_export.json, renamed into place when complete."""
    with staging(out, overwrite) as tmp:
        model.save_pretrained(str(tmp), safe_serialization=True)
        tok.save_pretrained(str(tmp))
        record["sizes_mb"] = {"weights": folder_mb(tmp, "*.safetensors")}
        atomic_write_json(tmp / MARKER, record)
    return record


def base_record(run: RunDir, predictor: Predictor, model) -> dict:
    cfg = run.config()
    return {"source_run": str(run.path), "tunelab": __version__, "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "base_model": cfg.model.name, "method": cfg.method.name, "task": cfg.task.type,
            "auto_class": auto_class(predictor), "merged": True, "dtype": "fp32", "quantization": "none",
            "parameters": count_parameters(model)[1]}


def describe_pruning(method: str, sparsity: float, ffn: float, layers: float, layer_choice: str = "influence") -> str:
    if method == "structured":
        spaced = "-spaced" if layer_choice == "spaced" else ""
        return "-".join(p for p in (f"ffn{round(100 * ffn)}" if ffn else "",
                                    f"layers{round(100 * layers)}{spaced}" if layers else "") if p)
    return f"{method}{round(100 * sparsity)}"


def prune_run(run_path: str, *, method: str = "magnitude", sparsity: float = 0.5, scope: str = "global",
              ffn: float = 0.0, layers: float = 0.0, layer_choice: str = "influence", calibration_examples: int = 128,
              recover_steps: int = 0, out: str | None = None, overwrite: bool = False) -> dict:
    """Prune a finished run's merged model into its own folder; return the folder's record."""
    t0 = time.time()
    if method not in CRITERIA:
        raise TunelabError(f"--method must be one of {', '.join(CRITERIA)}, not '{method}'")
    P.check_fraction("--sparsity", sparsity)
    P.check_fraction("--ffn", ffn)
    P.check_fraction("--layers", layers)
    if method == "structured" and not (ffn or layers):
        raise TunelabError("structured pruning needs --ffn and/or --layers (the fraction of feed-forward neurons / blocks removed)")
    if layer_choice not in LAYER_CHOICES:
        raise TunelabError(f"--layer-choice must be influence or spaced, not '{layer_choice}'")
    if recover_steps < 0:
        raise TunelabError(f"--recover-steps must be >= 0, not {recover_steps}")
    run = finished(run_path)
    name = describe_pruning(method, sparsity, ffn, layers, layer_choice) + (f"-recovered{recover_steps}" if recover_steps else "")
    out_dir = Path(out) if out else run.path / f"pruned-{name}"
    check_target(out_dir, overwrite)
    predictor, model = merged(run)
    record = base_record(run, predictor, model)
    need_calibration = method == "wanda" or method == "structured"
    cal = calibration(predictor, calibration_examples) if need_calibration else []
    info: dict = {"method": method, "calibration_examples": sum(len(b["input_ids"]) for b in cal) if cal else 0}
    with status(f"Pruning ({name})"):
        if method == "magnitude":
            P.magnitude(model, sparsity, scope)
            info.update(sparsity=sparsity, scope=scope)
        elif method == "wanda":
            P.wanda(model, sparsity, cal)
            info.update(sparsity=sparsity, scope="per output row (Wanda)")
        else:
            scores, influence = P.importance(model, cal)
            if ffn:
                info["ffn_width"] = P.prune_ffn(model, ffn, scores)
                info["ffn_removed"] = ffn
            if layers:
                info["layers_kept"] = P.prune_layers(model, layers, influence if layer_choice == "influence" else None)
                info["layer_choice"] = layer_choice
                info["layer_influence"] = [round(x, 5) for x in influence]
    if recover_steps:
        model, info["recovery"] = recover(run, predictor, model, out_dir, recover_steps, zeros=method != "structured")
    info.update(P.sparsity_of(model))
    if method != "structured":
        info["note"] = ("zeros are stored in dense tensors: a dense CPU matmul does the same work and the file is "
                        "as large as before; use structured pruning (or distillation) for speed and size")
    record.update(parameters_after=count_parameters(model)[1], pruning=info, seconds=round(time.time() - t0, 1))
    write_folder(model, predictor.tokenizer, out_dir, record, overwrite)
    console.print(f"Pruned [bold]{out_dir}[/] ({name}): {record['parameters']:,} -> {record['parameters_after']:,} parameters, "
                  f"{info['nonzero_params']:,} non-zero, {record['sizes_mb']['weights']:.1f} MB weights")
    return record


def recover(run: RunDir, predictor: Predictor, model, out_dir: Path, steps: int, zeros: bool):
    """A short LoRA fine-tune of the pruned model on the run's own data, merged back. After merging,
    the pruned positions of an unstructured model are zeroed again (the LoRA product is dense)."""
    scratch = out_dir.with_name(f".{out_dir.name}.recovery")
    shutil.rmtree(scratch, ignore_errors=True)
    try:
        write_folder(model, predictor.tokenizer, scratch / "pruned", {"auto_class": auto_class(predictor),
                                                                     "quantization": "none"}, True)
        masks = {n: p == 0 for n, p in model.named_parameters()} if zeros else {}
        raw = resolve_raw(run.path / "config.yaml", {
            "model": {"name": str(scratch / "pruned")}, "train": {"max_steps": steps},
            "output": {"dir": str(scratch / "run")}, "tracking": {"backends": []}})
        # every block Linear adapts: structured pruning changed the feed-forward layers most
        raw["method"] = {"name": "lora", "r": 16, "alpha": 32, "target_modules": "all-linear"}
        session = Session.from_config(validate_config(raw))
        session.run()
        summary = session.run_dir.read_json("summary.json")
        rec_pred, rec_model = merged(session.run_dir)
        if masks:
            with torch.no_grad():
                for n, p in rec_model.named_parameters():
                    if n in masks and masks[n].shape == p.shape:
                        p.masked_fill_(masks[n], 0.0)
        return rec_model, {"steps": summary["steps"], "method": "lora", "train_seconds": summary["train_seconds"],
                           "test_before_recovery": summary["test"].get("before"), "test_after_recovery": summary["test"].get("after")}
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def student_from_layers(run: RunDir, layers: int, overwrite: bool = False) -> Path:
    """RUN/student-L<k>: the merged teacher with k of its blocks, evenly spaced from the first
    (DistilBERT's initialisation; for a 30-layer SmolLM2 and k=15, every other layer)."""
    out = run.path / f"student-L{layers}"
    if (out / MARKER).is_file() and not overwrite:
        return out
    predictor, model = merged(run)
    from tunelab.compress.structure import block_list

    n = len(block_list(model)[2])
    if not 1 <= layers < n:
        raise TunelabError(f"--student-layers must be between 1 and {n - 1} (the teacher has {n} layers), not {layers}")
    record = base_record(run, predictor, model)
    keep = P.prune_layers(model, 1 - layers / n)
    record.update(parameters_after=count_parameters(model)[1], student_init={"layers_kept": keep, "of": n})
    write_folder(model, predictor.tokenizer, out, record, overwrite=True)
    return out


def distill_run(teacher_path: str, *, student: str | None = None, student_layers: int | None = None, alpha: float = 0.5,
                temperature: float = 2.0, overrides: list[str] | None = None, out: str | None = None,
                overwrite: bool = False) -> RunDir:
    """Train a student run on a finished teacher run's outputs (and its labels); return the student run."""
    from tunelab.config.load import merge_dicts, parse_overrides

    check_settings(alpha, temperature)
    if (student is None) == (student_layers is None):
        raise TunelabError("give the student as --student MODEL (a packaged name, folder or hub id) "
                           "or --student-layers N (the teacher with N of its layers), not both or neither")
    run = finished(teacher_path)
    label = student.replace("/", "_") if student else f"L{student_layers}"
    out_dir = Path(out) if out else run.path / f"distill-{label}-a{alpha:g}"
    if out_dir.exists() and any(out_dir.iterdir()) and not overwrite:
        raise TunelabError(f"'{out_dir}' already exists; pass --overwrite to replace it or choose another --out")
    if student_layers is not None:
        with status(f"Making the student: the teacher with {student_layers} layers"):
            student = str(student_from_layers(run, student_layers))
    defaults = {"model": {"name": student}, "method": {"name": "full"}, "train": {"lr": 1e-4},
                "output": {"dir": str(out_dir)}}
    raw = resolve_raw(run.path / "config.yaml", merge_dicts(defaults, parse_overrides(list(overrides or []))))
    cfg = validate_config(raw)
    with status("Loading the teacher"):
        teacher = Predictor.from_run(run.path)
    if alpha > 0 and teacher.task.token_level_distillation:
        from transformers import AutoTokenizer

        from tunelab.models.catalog import hf_source

        path, kwargs = hf_source(cfg.model)
        check_same_vocabulary(teacher.tokenizer, AutoTokenizer.from_pretrained(path, **kwargs), str(run.path), student)
    session = DistillSession(cfg, RunDir.create(cfg, overwrite=overwrite), teacher, alpha=alpha,
                             temperature=temperature, teacher_source=str(run.path))
    return session.run()
