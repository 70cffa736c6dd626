"""A federated client's round: the global trainable state in, local training with the ordinary
Session on the client's own data, the new trainable state out (adapter + task head, by name, as the
method saves it). Nothing else leaves the client: no examples, no gradients of the frozen base.

The client's data is either its folder from `tunelab federate`'s partitioner (node-config
`partition=<folder>`; in simulation `partitions=<root>` with Flower's partition-id) or its own file in
the recipe's format (node-config `data=<file>`, e.g. one hospital's CSV). The recipe travels with the
message (the server's resolved config), so a supernode needs only tunelab and its data.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path

import torch

from tunelab.config.load import validate_config
from tunelab.config.schema import RunConfig
from tunelab.console import console
from tunelab.data.splits import Splits
from tunelab.federated.partition import read_partition
from tunelab.runs.rundir import RunDir
from tunelab.session import Session
from tunelab.train.loop import Callback


class Proximal(Callback):
    """FedProx (Li et al. 2018): the gradient of mu/2 ||w - w_global||^2, mu (w - w_global), added to
    every trainable parameter's gradient before each optimizer step."""

    def __init__(self, mu: float):
        self.mu, self.anchor = mu, {}

    def on_train_begin(self, loop):
        self.anchor = {n: p.detach().clone() for n, p in loop.unwrapped.named_parameters() if p.requires_grad}

    def on_before_optimizer_step(self, loop):
        with torch.no_grad():
            for n, p in loop.unwrapped.named_parameters():
                if p.grad is not None and n in self.anchor:
                    p.grad.add_(p.detach() - self.anchor[n], alpha=self.mu)


class LastRecord(Callback):
    """The last train loss and validation metrics of the local run (sent back with the update)."""

    def __init__(self):
        self.loss, self.validation = None, {}

    def on_step_end(self, loop, record):
        self.loss = record["loss"]

    def on_evaluate(self, loop, metrics, improved):
        self.validation = {k: float(v) for k, v in metrics.items() if isinstance(v, (int, float))}


def client_config(recipe: dict, *, round_: int, index: int, threads: int | None, workdir: Path) -> RunConfig:
    """The server's recipe as one client trains it this round: its own scratch folder, no tracking,
    no test evaluation, a seed of its own per round."""
    fed = recipe.get("federated") or {}
    train = {**recipe.get("train", {}), "epochs": fed.get("local_epochs", 1), "max_steps": fed.get("local_steps"),
             "early_stopping_patience": None, "max_minutes": None, "keep_checkpoints": 1}
    if threads:
        train["threads"] = threads
    raw = {**recipe, "seed": int(recipe.get("seed", 42)) + 1000 * round_ + index, "train": train,
           "eval": {**recipe.get("eval", {}), "before": False, "k_shot": 0},
           "output": {"dir": str(workdir)}, "tracking": {"backends": []}}
    return validate_config(raw)


def client_name(node: dict, config: dict) -> str:
    """What the server's report calls this client (known before any of its data is read)."""
    if node.get("name"):
        return str(node["name"])
    if node.get("partition"):
        return Path(str(node["partition"])).name
    if node.get("data"):
        return Path(str(node["data"])).stem
    return f"client-{int(node.get('partition-id', 0))}"


def client_splits(cfg: RunConfig, node: dict, config: dict) -> tuple[str, int, Splits]:
    """(name, index, splits) of this client's own data: its validation doubles as test (unused)."""
    labels = json.loads(config.get("labels", "[]"))
    if node.get("data"):
        from tunelab.tasks import make_task

        data = cfg.data.model_copy(update={"name": None, "path": str(node["data"]), "train_path": None})
        splits = make_task(cfg).load_splits(data)
        name = str(node.get("name") or Path(node["data"]).stem)
        return name, int(node.get("partition-id", 0)), Splits(splits.train, splits.validation, splits.validation, labels or splits.labels)
    folder = node.get("partition")
    if not folder:
        folder = Path(config["partitions"]) / f"client-{int(node['partition-id'])}"
    info, train, val = read_partition(folder)
    return info["name"], int(info["index"]), Splits(train, val if len(val) else train.iloc[:0], val if len(val) else train.iloc[:0], labels)


def train_round(recipe: dict, node: dict, config: dict, state: dict[str, torch.Tensor]) -> tuple[dict, dict]:
    """One client's local training from the global `state`; returns (new state, metrics)."""
    round_ = int(config.get("round", 1))
    threads = int(config["client-threads"]) if config.get("client-threads") else None
    name, index, splits = client_name(node, config), int(node.get("partition-id", 0)), None
    workdir = Path(tempfile.mkdtemp(prefix="tunelab-client-"))
    quiet, console.quiet = console.quiet, True
    try:
        try:
            cfg = client_config(recipe, round_=round_, index=index, threads=threads, workdir=workdir / "run")
            name, index, splits = client_splits(cfg, node, config)
            if splits.validation.empty:  # nothing local to validate on: the train share stands in
                splits = Splits(splits.train, splits.train, splits.train, splits.labels)
            session = Session(cfg, RunDir.create(cfg, overwrite=True))
            session.load_data(splits)
            session.build()
            session.method.load_trainable_state(session.model, state)
            session.prepare()
            last = LastRecord()
            mu = float(config.get("proximal-mu", 0.0))
            session.fit([last, *([Proximal(mu)] if mu > 0 else [])])
            new = session.method.trainable_state(session.model)
        except Exception as e:
            # The server's report names the client that failed (Flower passes this text back).
            raise RuntimeError(f"client {name}: {type(e).__name__}: {e}") from e
    finally:
        console.quiet = quiet
        shutil.rmtree(workdir, ignore_errors=True)
    # The same keys from every client (Flower's aggregation requires it): the task's headline metric.
    metric = session.metric
    metrics = {"num-examples": float(len(splits.train)), "unit-weight": 1.0, "client-index": float(index), "train-loss": float(last.loss or 0.0),
               "steps": float(session.state["step"]), "seconds": float(session.state["train_seconds"]),
               "val-loss": float(last.validation.get("loss", 0.0)), f"val-{metric}": float(last.validation.get(metric, 0.0))}
    return new, {"name": name, **metrics}
