"""Cut a task's training (and validation) split across clients, and write each client's share as its
own folder, the only data a client reads.

Written here rather than taken from `flwr-datasets`: its partitioners need `datasets<5` (we are on 5),
and what is needed is small: index arrays over a pandas frame.
- iid: a shuffle cut into equal shares;
- dirichlet (label skew, Hsu et al. 2019): for each label, the shares of its examples over the clients
  are drawn from Dirichlet(alpha); small alpha gives clients dominated by one or two labels. Tasks
  without labels have nothing to skew: the error says to use quantity or iid;
- quantity: client sizes drawn from Dirichlet(alpha), rows mixed.
A natural partition (one hospital's own file) needs no cutting: its supernode reads its own file
(node-config `data=`).
Every client gets at least `min_examples` training rows (redrawn, then topped up from the largest).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd

from tunelab.config.federated import PartitionConfig
from tunelab.errors import TunelabError
from tunelab.runs.io import atomic_write_json


def partition_indices(df: pd.DataFrame, n: int, cfg: PartitionConfig, *, label: str | None = "label") -> list[np.ndarray]:
    """`n` disjoint index arrays covering `df`."""
    rng = np.random.default_rng(cfg.seed)
    if len(df) < n * cfg.min_examples:
        raise TunelabError(f"{len(df)} training examples cannot give {n} clients {cfg.min_examples} each; "
                           "lower federated.clients or federated.partition.min_examples, or add data")
    if cfg.kind == "iid":
        return [np.sort(p) for p in np.array_split(rng.permutation(len(df)), n)]
    if cfg.kind == "quantity":
        for _ in range(100):
            shares = rng.dirichlet([cfg.alpha] * n)
            sizes = np.floor(shares * len(df)).astype(int)
            if sizes.min() >= cfg.min_examples:
                break
        else:
            sizes = _top_up(sizes, cfg.min_examples)
        sizes[-1] = len(df) - sizes[:-1].sum()
        cuts = np.cumsum(sizes)[:-1]
        return [np.sort(p) for p in np.split(rng.permutation(len(df)), cuts)]
    if label is None or label not in df.columns:
        raise TunelabError("federated.partition.kind=dirichlet skews labels, and this task's data has none; "
                           "use kind=quantity (skewed sizes) or kind=iid")
    labels = df[label].astype(str).to_numpy()
    for _ in range(100):
        parts: list[list[int]] = [[] for _ in range(n)]
        for value in np.unique(labels):
            idx = rng.permutation(np.flatnonzero(labels == value))
            cuts = (np.cumsum(rng.dirichlet([cfg.alpha] * n)) * len(idx)).astype(int)[:-1]
            for k, chunk in enumerate(np.split(idx, cuts)):
                parts[k].extend(chunk.tolist())
        if min(len(p) for p in parts) >= cfg.min_examples:
            break
    else:
        raise TunelabError(f"Dirichlet(alpha={cfg.alpha}) left a client with fewer than {cfg.min_examples} examples "
                           "in 100 draws; raise federated.partition.alpha or lower federated.clients")
    return [np.sort(np.array(p, dtype=int)) for p in parts]


def _top_up(sizes: np.ndarray, minimum: int) -> np.ndarray:
    sizes = sizes.copy()
    for k in np.flatnonzero(sizes < minimum):
        big = int(np.argmax(sizes))
        take = minimum - sizes[k]
        sizes[big] -= take
        sizes[k] += take
    return sizes


def label_counts(df: pd.DataFrame) -> dict[str, int] | None:
    return {str(k): int(v) for k, v in df["label"].value_counts().sort_index().items()} if "label" in df.columns else None


def write_partitions(splits, n: int, cfg: PartitionConfig, out: Path, *, label: str | None = "label") -> list[dict]:
    """One folder per client under `out` (train.jsonl, validation.jsonl, client.json); returns the
    clients' descriptions (name, sizes, label counts), also written to out/partitions.json.
    Validation is cut the same way as train (same kind, same seed), so each client validates locally on
    data like its own."""
    names = [f"client-{k}" for k in range(n)]
    train_parts = partition_indices(splits.train, n, cfg, label=label)
    val_cfg = cfg.model_copy(update={"min_examples": 1})
    try:
        val_parts = partition_indices(splits.validation, n, val_cfg, label=label)
    except TunelabError:  # too small to skew: an even cut
        val_parts = partition_indices(splits.validation, n, val_cfg.model_copy(update={"kind": "iid"}))
    clients = []
    for k, name in enumerate(names):
        folder = out / name
        folder.mkdir(parents=True, exist_ok=True)
        train, val = splits.train.iloc[train_parts[k]], splits.validation.iloc[val_parts[k]]
        if label and label in train.columns and len(val):
            val = val[val[label].isin(set(train[label]))]  # a client cannot validate a label it never saw
        train.to_json(folder / "train.jsonl", orient="records", lines=True, force_ascii=False)
        val.to_json(folder / "validation.jsonl", orient="records", lines=True, force_ascii=False)
        info = {"name": name, "index": k, "train": len(train), "validation": len(val), "labels": label_counts(train)}
        atomic_write_json(folder / "client.json", info)
        clients.append(info)
    atomic_write_json(out / "partitions.json", {"kind": cfg.kind, "alpha": cfg.alpha,
                                                 "seed": cfg.seed, "clients": clients})
    return clients


def read_partition(folder: str | Path) -> tuple[dict, pd.DataFrame, pd.DataFrame]:
    """A client's own share: (client.json, train, validation)."""
    folder = Path(folder)
    if not (folder / "train.jsonl").is_file():
        raise TunelabError(f"no client partition in '{folder}' (train.jsonl missing); point the supernode's "
                           "node-config partition= at a folder `tunelab federate` wrote")
    info = json.loads((folder / "client.json").read_text(encoding="utf-8"))
    read = lambda name: pd.read_json(folder / name, orient="records", lines=True, dtype=False)  # noqa: E731
    val = read("validation.jsonl") if (folder / "validation.jsonl").stat().st_size else pd.DataFrame()
    return info, read("train.jsonl"), val
