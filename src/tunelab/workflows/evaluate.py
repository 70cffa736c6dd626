"""`tunelab eval RUN` and `tunelab predict RUN`: reuse a finished run's model."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pandas as pd

from tunelab.console import console
from tunelab.data import load_splits
from tunelab.data.files import read_table
from tunelab.errors import TunelabError
from tunelab.runs.report import results_table
from tunelab.workflows.common import LoadedRun, load_run


def evaluate_run(path: str, split: str = "test", data_file: str | None = None) -> dict:
    lr = load_run(path)
    cfg = lr.cfg
    if cfg.task.type != "classification":
        return _evaluate_generative(lr, split, data_file)
    if data_file:
        df = read_table(data_file, cfg.data.format, cfg.data.encoding)
        for col, key in ((cfg.data.text_column, "--text-column"), (cfg.data.label_column, "--label-column")):
            if col not in df.columns:
                raise TunelabError(f"'{data_file}' has no column '{col}' (it has: {', '.join(map(str, df.columns[:12]))})")
        df = df[[cfg.data.text_column, cfg.data.label_column]].dropna()
        df.columns = ["text", "label"]
        df = df.assign(text=df["text"].astype(str), label=df["label"].astype(str))
        unknown = sorted(set(df["label"]) - set(lr.labels))
        if unknown:
            raise TunelabError(f"'{data_file}' has labels the model was not trained on: {', '.join(unknown[:5])}")
        source = data_file
    else:
        df = getattr(load_splits(cfg.data, cfg.task), split)
        source = f"{split} split"
    enc = lr.task.encode(lr.tokenizer, df, lr.labels, cfg.model.max_length)
    metrics = lr.task.evaluate(lr.model, lr.tokenizer, enc, lr.labels, cfg.eval.batch_size, lr.precision)
    table = results_table({source: metrics}, lr.labels)
    table.title = f"{lr.run.path.name}: {source}"
    console.print(table)
    lr.run.write_json(f"eval-{time.strftime('%Y%m%d-%H%M%S')}.json", {"source": source, "metrics": metrics})
    return metrics


def _evaluate_generative(lr: LoadedRun, split: str, data_file: str | None) -> dict:
    from tunelab.data.generative import load_generative_splits

    cfg = lr.cfg
    data_cfg = cfg.data.model_copy(update={"name": None, "path": data_file, "train_path": None}) if data_file else cfg.data
    splits = load_generative_splits(data_cfg, cfg.task.type)
    df = getattr(splits, split)
    n = min(len(df), cfg.eval.max_samples or len(df))
    df = df.iloc[np.sort(np.random.default_rng(cfg.data.split.seed).permutation(len(df))[:n])]
    convs = lr.task.conversations(df, cfg)
    metrics = lr.task.evaluate(lr.model, lr.tokenizer, convs, df["references"].tolist(), cfg, lr.precision)
    source = data_file or f"{split} split ({n} examples)"
    numbers = {k: v for k, v in metrics.items() if k != "predictions"}
    console.print(results_table({source: numbers}, title=f"{lr.run.path.name}: {source}"))
    lr.run.write_json(f"eval-{time.strftime('%Y%m%d-%H%M%S')}.json", {"source": source, "metrics": numbers,
                                                                     "predictions": metrics["predictions"]})
    return numbers


def generate_for_texts(lr: LoadedRun, texts: list[str]) -> list[str]:
    """Generative runs: each text fills the task's prompt (source / question) and gets a reply."""
    from tunelab.tasks.generation import generate_texts

    return generate_texts(lr.model, lr.tokenizer, task_prompts(lr, texts), lr.cfg.generate, seq2seq=lr.task.seq2seq,
                          precision=lr.precision, max_length=lr.cfg.model.max_length)


def task_prompts(lr: LoadedRun, texts: list[str]) -> list[str]:
    """The model text for each input: the run's task prompt (and system prompt) rendered for its model."""
    from tunelab.tasks.prompts import Renderer, row_to_conversation

    renderer = Renderer(lr.tokenizer, lr.task.seq2seq)
    prompts = []
    for t in texts:
        row = {"source": t, "question": t, "target": "", "answer": "", "messages": [{"role": "user", "content": t},
                                                                                  {"role": "assistant", "content": ""}]}
        conv = row_to_conversation(row, lr.cfg.task, lr.cfg.task.system_prompt)
        prompts.append(renderer.render(conv[:-1], add_generation_prompt=True))
    return prompts


def predict_texts(lr: LoadedRun, texts: list[str]) -> list[dict]:
    if lr.cfg.task.type != "classification":
        return [{"text": t, "output": o} for t, o in zip(texts, generate_for_texts(lr, texts))]
    df = pd.DataFrame({"text": texts})
    enc = lr.task.encode(lr.tokenizer, df, lr.labels, lr.cfg.model.max_length, "Tokenizing")
    probs, _ = lr.task.predict_proba(lr.model, lr.tokenizer, enc, lr.cfg.eval.batch_size, lr.precision, "Predicting")
    return [
        {"text": t, "label": lr.labels[int(np.argmax(p))], "score": float(np.max(p)),
         "scores": {name: float(v) for name, v in zip(lr.labels, p)}}
        for t, p in zip(texts, probs)
    ]


def predict_file(lr: LoadedRun, in_path: str, out_path: str, text_column: str | None = None) -> int:
    out = Path(out_path)
    if out.exists():
        raise TunelabError(f"'{out_path}' already exists; choose another --out path (nothing was overwritten)")
    df = read_table(in_path, "auto", lr.cfg.data.encoding)
    col = text_column or lr.cfg.data.text_column
    if col not in df.columns:
        raise TunelabError(f"'{in_path}' has no column '{col}' (it has: {', '.join(map(str, df.columns[:12]))}); pass --text-column")
    if df.empty:
        raise TunelabError(f"'{in_path}' has no rows to predict")
    preds = predict_texts(lr, df[col].fillna("").astype(str).tolist())
    if lr.cfg.task.type != "classification":
        df = df.assign(output=[p["output"] for p in preds])
    else:
        df = df.assign(prediction=[p["label"] for p in preds], score=[p["score"] for p in preds])
        for name in lr.labels:
            df[f"score_{name}"] = [p["scores"][name] for p in preds]
    tmp = out.with_name(f".{out.name}.tmp")
    if out.suffix.lower() == ".jsonl":
        df.to_json(tmp, orient="records", lines=True, force_ascii=False)
    else:
        df.to_csv(tmp, index=False)
    tmp.replace(out)
    return len(df)
