"""`tunelab federate RECIPE`: partition the data, run each strategy as a Flower federation, train the
baselines at the same budget, and write one report.

    runs/federate-<name>-<time>/
      partitions/client-<k>/      each client's own data (train.jsonl, validation.jsonl, client.json)
      fedavg/  fedprox/ ...       one ordinary run folder per strategy: the global adapter, before/after,
                                  federated/rounds.jsonl
      centralized/                the same recipe on all the data pooled (what federation gives up)
      local/client-<k>/           each client alone on its own data (what federation gains)
      report.md  report.html  federate.json  plots/

Budget: every variant sees the same number of passes over its data: a federated client trains
`local_epochs` per round for `rounds` rounds; centralized and local-only runs train rounds x
local_epochs epochs.
"""

from __future__ import annotations

import copy
import json
import time
from pathlib import Path

from tunelab.config.load import merge_dicts, parse_overrides, read_recipe, validate_config
from tunelab.console import console
from tunelab.data.splits import Splits
from tunelab.federated.partition import read_partition, write_partitions
from tunelab.federated.report import write_federate_report
from tunelab.federated.run import deploy, simulate
from tunelab.federated.strategy import check_clients
from tunelab.runs.io import atomic_write_json
from tunelab.runs.rundir import RunDir
from tunelab.session import Session


def variants(raw: dict, strategies: list[str], dp_noise: list[float]) -> dict[str, dict]:
    """Run folder name -> recipe: each strategy, then the first one with each DP noise level (server-side
    fixed clipping unless the recipe's federated.dp says otherwise)."""
    out = {s: merge_dicts(copy.deepcopy(raw), {"federated": {"strategy": s}}) for s in strategies}
    dp = (raw.get("federated") or {}).get("dp") or {}
    for noise in dp_noise:
        out[f"{strategies[0]}-dp{noise:g}"] = merge_dicts(copy.deepcopy(raw), {"federated": {
            "strategy": strategies[0], "dp": {**dp, "noise": noise}}})
    return out


def federate(recipe: str | None, overrides: list[str] | None = None, *, strategies: list[str] | None = None,
             superlink: str | None = None, out: str | None = None, baselines: bool | None = None,
             dp_noise: list[float] | None = None) -> Path:
    raw, _ = read_recipe(recipe)
    if overrides:
        raw = merge_dicts(raw, parse_overrides(overrides))
    cfg = validate_config(raw)
    fed = cfg.federated
    check_clients(fed)
    configs = {name: validate_config(r) for name, r in variants(raw, strategies or [fed.strategy], dp_noise or []).items()}
    for c in configs.values():
        check_clients(c.federated)
    names = list(configs)
    root = Path(out) if out else Path(cfg.output.root) / f"federate-{cfg.name}-{time.strftime('%Y%m%d-%H%M%S')}"
    root.mkdir(parents=True, exist_ok=True)
    partitions = root / "partitions"
    from tunelab.tasks import make_task

    task = make_task(cfg)
    splits = task.load_splits()
    if (partitions / "partitions.json").is_file():
        console.print(f"Partitions: reusing {partitions}")
        clients = json.loads((partitions / "partitions.json").read_text(encoding="utf-8"))["clients"]
    else:
        clients = write_partitions(splits, fed.clients, fed.partition, partitions,
                                   label="label" if task.labels else None)
    console.print(f"[bold]Federate[/] {cfg.name}: {len(clients)} clients ({fed.partition.kind}"
                  + (f", alpha {fed.partition.alpha}" if fed.partition.kind != "iid" else "") + "): "
                  + ", ".join(f"{c['name']} {c['train']}" for c in clients) + f" -> {root}")
    results = {}
    for s in names:
        console.print(f"\n[bold]== {s}[/]")
        c = configs[s]
        run_cfg = c.model_copy(update={"output": c.output.model_copy(update={"dir": str(root / s)})})
        run_dir = root / s
        if (run_dir / "summary.json").is_file():  # a folder being continued: this one is done
            console.print(f"{run_dir} is complete; kept")
            results[s] = {"run": str(run_dir), "wall_seconds": json.loads((run_dir / "summary.json").read_text())["wall_seconds"]}
            continue
        if not (run_dir / "config.yaml").is_file():
            RunDir.create(run_cfg)
        t0 = time.perf_counter()
        if superlink:
            deploy(run_dir, superlink)
        else:
            simulate(run_dir, partitions, run_cfg.federated)
        results[s] = {"run": str(run_dir), "wall_seconds": round(time.perf_counter() - t0, 1)}
    if fed.baselines if baselines is None else baselines:
        results.update(run_baselines(raw, cfg, root, splits, partitions, clients))
    doc = write_federate_report(root, cfg, names, clients, results)
    atomic_write_json(root / "federate.json", doc)
    console.print(f"\nReport: {root / 'report.md'}  {root / 'report.html'}")
    return root


def _budget_raw(raw: dict, cfg, out: Path) -> dict:
    fed = cfg.federated
    r = copy.deepcopy(raw)
    train = r.setdefault("train", {})
    if fed.local_steps:
        train["max_steps"] = fed.local_steps * fed.rounds
    train["epochs"] = fed.local_epochs * fed.rounds
    r["eval"] = {**(r.get("eval") or {}), "before": False}  # "before" is the federated runs' (same model, same test)
    r["output"] = {**(r.get("output") or {}), "dir": str(out)}
    return r


def run_baselines(raw: dict, cfg, root: Path, splits: Splits, partitions: Path, clients: list[dict]) -> dict:
    """Centralized (all data pooled) and local-only (each client alone), same passes over the data."""
    out = {}

    def done(folder: Path, key: str) -> bool:
        if (folder / "summary.json").is_file():  # a folder being continued
            out[key] = {"run": str(folder), "wall_seconds": json.loads((folder / "summary.json").read_text())["wall_seconds"]}
            return True
        return False

    if not done(root / "centralized", "centralized"):
        console.print("\n[bold]== centralized[/] (all the clients' data pooled)")
        c = validate_config(_budget_raw(raw, cfg, root / "centralized"))
        t0 = time.perf_counter()
        Session.from_config(c, overwrite=True).run()
        out["centralized"] = {"run": str(root / "centralized"), "wall_seconds": round(time.perf_counter() - t0, 1)}
    for info in clients:
        name = info["name"]
        if done(root / "local" / name, f"local/{name}"):
            continue
        console.print(f"\n[bold]== local-only {name}[/] ({info['train']} examples, tested on the shared test split)")
        c = validate_config(_budget_raw(raw, cfg, root / "local" / name))
        _, train, val = read_partition(partitions / name)
        if val.empty:
            val = train
        t0 = time.perf_counter()
        s = Session.from_config(c, overwrite=True)
        s.load_data(Splits(train, val, splits.test, splits.labels))
        s.run()
        out[f"local/{name}"] = {"run": str(root / "local" / name), "wall_seconds": round(time.perf_counter() - t0, 1)}
    return out

