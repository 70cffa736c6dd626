"""The federate report: centralized vs each strategy vs local-only (mean and worst client) on the
test split's headline metric, with what travelled per round, the rounds table of each strategy
(global metric, weighted client metrics, left-out clients, bytes, time) and metric-vs-round plots."""

from __future__ import annotations

import json
from pathlib import Path

from tunelab.runs.listing import headline
from tunelab.runs.tables import markdown_table, save_figure, write_table_report


def _read(path: Path) -> dict:
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}


def _rounds(run: Path) -> list[dict]:
    p = run / "federated" / "rounds.jsonl"
    return [json.loads(x) for x in p.read_text(encoding="utf-8").splitlines() if x.strip()] if p.is_file() else []


def _f(v, digits: int = 4) -> str:
    return "" if v is None else f"{v:.{digits}f}" if isinstance(v, float) else str(v)


def _mb(n) -> str:
    return "" if n is None else f"{n / 2**20:.2f} MiB" if n >= 2**20 else f"{n / 1024:.1f} KiB"


def write_federate_report(root: Path, cfg, strategies: list[str], clients: list[dict], results: dict) -> dict:
    fed = cfg.federated
    rows, doc_rows = [], []
    metric = None
    base_before = None
    for name in strategies:
        run = Path(results[name]["run"])
        summary, info = _read(run / "summary.json"), _read(run / "federated" / "federated.json")
        metric, before, after = headline(summary)
        base_before = base_before if base_before is not None else before
        rounds = _rounds(run)
        per_round = info.get("bytes_sent", 0) / max(1, len(rounds)) if info else None
        left = sum(len(r.get("left_out", [])) for r in rounds)
        dp = info.get("dp")
        privacy = info.get("privacy") or {}
        label = name + (f" + DP (noise {dp['noise']}, clip {dp['clip']})" if dp else "")
        rows.append([label, _f(before), _f(after), _f(after - before if None not in (after, before) else None),
                     len(rounds), _mb(per_round), _mb(info.get("bytes_per_update") or (rounds[0].get("bytes_per_update") if rounds else None)),
                     left, _f(privacy.get("epsilon"), 2) if privacy else "", f"{results[name]['wall_seconds']:.0f} s"])
        doc_rows.append({"variant": name, "before": before, "after": after, "rounds": len(rounds), "bytes_sent_per_round": per_round,
                         "left_out": left, "privacy": privacy or None, "wall_seconds": results[name]["wall_seconds"], "dp": dp})
    if "centralized" in results:
        summary = _read(Path(results["centralized"]["run"]) / "summary.json")
        m, _, after = headline(summary)
        metric = metric or m
        rows.append(["centralized (data pooled)", _f(base_before), _f(after),
                     _f(after - base_before if None not in (after, base_before) else None), "", "all data moved", "", "", "",
                     f"{results['centralized']['wall_seconds']:.0f} s"])
        doc_rows.append({"variant": "centralized", "after": after, "wall_seconds": results["centralized"]["wall_seconds"]})
    local = {k.split("/", 1)[1]: headline(_read(Path(v["run"]) / "summary.json"))[2] for k, v in results.items() if k.startswith("local/")}
    local = {k: v for k, v in local.items() if v is not None}
    if local:
        mean = sum(local.values()) / len(local)
        worst = min(local, key=local.get)
        secs = sum(v["wall_seconds"] for k, v in results.items() if k.startswith("local/"))
        rows.append(["local-only, mean of clients", _f(base_before), _f(mean), _f(mean - base_before if base_before is not None else None),
                     "", "nothing", "", "", "", f"{secs:.0f} s"])
        rows.append([f"local-only, worst ({worst})", _f(base_before), _f(local[worst]),
                     _f(local[worst] - base_before if base_before is not None else None), "", "nothing", "", "", "", ""])
        doc_rows.append({"variant": "local-only", "per_client": local, "mean": mean, "worst": {worst: local[worst]}})
    head = ["variant", f"before {metric}", f"after {metric}", "change", "rounds", "sent / round", "one update", "left out",
            "epsilon", "time"]
    intro = [f"Task {cfg.task.type}, model {cfg.model.name}, method {cfg.method.name}; {len(clients)} clients, partition "
             f"{fed.partition.kind}" + (f" (alpha {fed.partition.alpha})" if fed.partition.kind != "iid" else "")
             + f"; {fed.rounds} rounds x {fed.local_steps or fed.local_epochs} local {'steps' if fed.local_steps else 'epochs'}; "
             f"metric on the shared test split.",
             "Clients: " + ", ".join(f"{c['name']} {c['train']} train" + (f" {c['labels']}" if c.get("labels") else "")
                                     for c in clients) + "."]
    info0 = _read(Path(results[strategies[0]]["run"]) / "federated" / "federated.json")
    r0 = _rounds(Path(results[strategies[0]]["run"]))
    if info0 and r0:
        intro.append(f"What travels: one update is {_mb(r0[0].get('bytes_per_update'))} ({info0['trainable_params']:,} "
                     f"trainable parameters) each way per client per round; the whole model would be "
                     f"{_mb(info0['full_model_bytes'])} (fp32, {info0['total_params']:,} parameters).")
    extra = []
    plots = _plot(root, strategies, results, metric_name(results, strategies))
    for name in strategies:
        rounds = _rounds(Path(results[name]["run"]))
        extra += [f"## Rounds: {name}", ""]
        body = []
        for r in rounds:
            val = r.get("validation", {})
            clients_m = r.get("clients", [])
            m = metric_name(results, [name])
            weighted = _weighted(clients_m, f"val-{m}")
            left = "; ".join(f"{x['client']}: {x['reason']}" for x in r.get("left_out", []))
            second = "perplexity" if m == "loss" else "loss"
            body.append([r["round"], _f(val.get(m)), _f(val.get(second)), _f(weighted), len(clients_m), left,
                         _mb(r.get("bytes_sent")), _mb(r.get("bytes_received")), _f(r.get("seconds"), 1)])
        m = metric_name(results, [name])
        extra += markdown_table(["round", f"global val {m}", f"global val {'perplexity' if m == 'loss' else 'loss'}",
                                 "clients' own val (weighted)", "clients", "left out", "sent", "received", "seconds"], body)
        extra.append("")
    write_table_report(root, f"Federated: {cfg.name}", intro, head, rows, plots, extra)
    return {"recipe": cfg.name, "metric": metric, "clients": clients, "rows": doc_rows,
            "federated": fed.model_dump(mode="json")}


def metric_name(results: dict, strategies: list[str]) -> str:
    for name in strategies:
        s = _read(Path(results[name]["run"]) / "summary.json")
        if s.get("metric"):
            return s["metric"]
    return "loss"


def _weighted(clients: list[dict], key: str) -> float | None:
    pairs = [(c.get("num-examples", 0), c[key]) for c in clients if key in c]
    total = sum(w for w, _ in pairs)
    return sum(w * v for w, v in pairs) / total if total else None


def _plot(root: Path, strategies: list[str], results: dict, metric: str) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for name in strategies:
        run = Path(results[name]["run"])
        r0 = _read(run / "federated" / "round0.json")
        rounds = _rounds(run)
        xs = ([0] if metric in r0 else []) + [r["round"] for r in rounds]
        ys = ([r0[metric]] if metric in r0 else []) + [r.get("validation", {}).get(metric) for r in rounds]
        ax.plot(xs, ys, marker="o", label=name)
    ax.set_xlabel("round")
    ax.set_ylabel(f"global validation {metric}")
    ax.grid(alpha=0.3)
    ax.legend()
    return [save_figure(fig, root, "metric_vs_round")]
