"""`tunelab eval RUN` and `tunelab predict RUN`: a finished run's model through the inference layer."""

from __future__ import annotations

import time
from pathlib import Path

from tunelab.console import console, status
from tunelab.data.files import read_table
from tunelab.errors import TunelabError
from tunelab.runs.report import results_table
from tunelab.session import Predictor


def load_predictor(path: str) -> Predictor:
    with status("Loading the model + adapter"):
        return Predictor.from_run(path)


def evaluate_run(path: str, split: str = "test", data_file: str | None = None) -> dict:
    """Metrics of a run on a split of its data, or on a file in its data's format."""
    predictor = load_predictor(path)
    task = predictor.task
    if data_file:
        df, source = task.read_file(data_file), data_file
    else:
        labels = list(task.labels)
        df, source = getattr(task.load_splits(), split), f"{split} split"
        task.labels = labels or task.labels  # the trained model's label order
    metrics = task.evaluate_frame(predictor.model, df, "Evaluating")
    numbers = {k: v for k, v in metrics.items() if k != "predictions"}
    console.print(results_table({source: numbers}, task.report_parts({source: numbers}).get("labels"),
                                title=f"{predictor.run.path.name}: {source}"))
    record = {"source": source, "metrics": numbers}
    if "predictions" in metrics:
        record["predictions"] = metrics["predictions"]
    predictor.run.write_json(f"eval-{time.strftime('%Y%m%d-%H%M%S')}.json", record)
    return numbers


def predict_file(predictor: Predictor, in_path: str, out_path: str, text_column: str | None = None) -> int:
    out = Path(out_path)
    if out.exists():
        raise TunelabError(f"'{out_path}' already exists; choose another --out path (nothing was overwritten)")
    df = read_table(in_path, "auto", predictor.cfg.data.encoding)
    col = text_column or predictor.cfg.data.text_column
    if col not in df.columns:
        raise TunelabError(f"'{in_path}' has no column '{col}' (it has: {', '.join(map(str, df.columns[:12]))}); pass --text-column")
    if df.empty:
        raise TunelabError(f"'{in_path}' has no rows to predict")
    preds = predictor.predict(df[col].fillna("").astype(str).tolist(), desc="Predicting")
    if predictor.kind == "generation":
        df = df.assign(output=[p["output"] for p in preds])
    else:
        df = df.assign(prediction=[p["label"] for p in preds], score=[p["score"] for p in preds])
        for name in predictor.labels:
            df[f"score_{name}"] = [p["scores"][name] for p in preds]
    tmp = out.with_name(f".{out.name}.tmp")
    if out.suffix.lower() == ".jsonl":
        df.to_json(tmp, orient="records", lines=True, force_ascii=False)
    else:
        df.to_csv(tmp, index=False)
    tmp.replace(out)
    return len(df)
