"""Search benchmarks (never part of `make test`): what a `tunelab tune` study costs and what pruning saves.

    python -m bench.tune_study pruning     # the same study with and without the median pruner
    python -m bench.tune_study recipe      # `tunelab tune sentiment-tune` as packaged: wall time, best trial

pruning: one random-sampler study run twice with the same seed, so both arms draw the same 16
configurations in the same order; the only difference is the pruner. That isolates what pruning
saves (trial compute, summed over trials) and whether it costs the best value: the best trial is lost
only if the pruner stopped it. Results: bench/results/<cpu kind>/tune_<name>.json and .md, with the CPU.
"""

from __future__ import annotations

import argparse
import csv
import json
import time
from pathlib import Path

from bench.common import machine, results_dir, scratch_dir, setup


# 2,000 tweets x 2 epochs (126 steps), validation every 25 steps on 800 tweets: 5 reports per trial.
PRUNING = ["data.max_train_samples=2000", "data.max_eval_samples=800", "train.epochs=2", "train.eval_every_steps=25",
           "train.early_stopping_patience=null", "tune.sampler=random", "tune.startup_trials=3", "tune.warmup_steps=25",
           "tune.space.train.lr={log_uniform: [1.0e-5, 3.0e-2]}", "tune.space.method.r={choices: [2, 4, 8, 16, 32]}",
           "tune.space.method.dropout={uniform: [0.0, 0.2]}"]


def rows(root: Path) -> list[dict]:
    with open(root / "trials.csv", newline="") as f:
        return list(csv.DictReader(f))


def study_numbers(root: Path, metric: str, wall: float) -> dict:
    trials = rows(root)
    done = [r for r in trials if r["state"] == "complete"]
    best = max(done, key=lambda r: float(r[metric]))
    return {"wall_seconds": round(wall, 1), "trials": len(trials),
            "complete": len(done), "pruned": sum(r["state"] == "pruned" for r in trials),
            "failed": sum(r["state"] == "fail" for r in trials),
            "trial_seconds_sum": round(sum(float(r["trial s"] or 0) for r in trials), 1),
            "train_seconds_sum": round(sum(float(r["train s"] or 0) for r in trials), 1),
            "steps_sum": sum(int(r["steps"] or 0) for r in trials),
            "best_value": float(best[metric]), "best_trial": int(best["trial"]),
            "best_params": {k: best[k] for k in best if k.startswith(("train.", "method."))},
            "pruned_at": {r["trial"]: r["pruned at step"] for r in trials if r["state"] == "pruned"}}


def run_study(recipe: str, overrides: list[str], n_trials: int | None, out: Path) -> dict:
    from tunelab.search import tune

    t0 = time.perf_counter()
    tune(recipe, overrides, out=str(out), n_trials=n_trials, show_progress=False)
    return study_numbers(out, json.loads((out / "tune.json").read_text())["metric"], time.perf_counter() - t0)


def pruning(n_trials: int) -> dict:
    scratch = Path(scratch_dir())
    arms = {}
    for pruner in ("none", "median"):
        arms[pruner] = run_study("sentiment-tune", [*PRUNING, f"tune.pruner={pruner}"], n_trials, scratch / pruner)
        print(pruner, json.dumps(arms[pruner]), flush=True)
    off, on = arms["none"], arms["median"]
    return {"recipe": "sentiment-tune", "overrides": PRUNING, "n_trials": n_trials, "arms": arms,
            "compute_saved_percent": round(100 * (1 - on["trial_seconds_sum"] / off["trial_seconds_sum"]), 1),
            "steps_saved_percent": round(100 * (1 - on["steps_sum"] / off["steps_sum"]), 1),
            "best_value_delta": round(on["best_value"] - off["best_value"], 4)}


def recipe(out: Path | None) -> dict:
    out = out or Path(scratch_dir()) / "study"
    return {"recipe": "sentiment-tune", "study": run_study("sentiment-tune", [], None, out),
            "best_yaml": (out / "best.yaml").read_text()}


def write(name: str, doc: dict) -> None:
    doc = {"measured": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()), **machine(), **doc}
    out = results_dir()
    out.mkdir(parents=True, exist_ok=True)
    (out / f"tune_{name}.json").write_text(json.dumps(doc, indent=1))
    lines = [f"# tune {name} ({doc['measured']}; {doc['cpu']}, {doc['cores']} cores, flags {' '.join(doc['cpu_flags'])})", ""]
    arms = doc.get("arms") or {"study": doc["study"]}
    keys = ["wall_seconds", "trials", "complete", "pruned", "failed", "trial_seconds_sum", "steps_sum", "best_value", "best_trial"]
    lines += ["| arm | " + " | ".join(keys) + " |", "|---" * (len(keys) + 1) + "|"]
    lines += [f"| {a} | " + " | ".join(str(v[k]) for k in keys) + " |" for a, v in arms.items()]
    if "compute_saved_percent" in doc:
        lines += ["", f"Pruning saved {doc['compute_saved_percent']}% of trial compute ({doc['steps_saved_percent']}% of "
                  f"training steps); best value with pruning minus without: {doc['best_value_delta']:+.4f}."]
    (out / f"tune_{name}.md").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("what", choices=["pruning", "recipe"])
    p.add_argument("--trials", type=int, default=16, help="pruning: trials per arm")
    p.add_argument("--out", type=Path, help="recipe: keep the study folder here (to retrain its best.yaml)")
    args = p.parse_args()
    setup("cpu")
    write(args.what, pruning(args.trials) if args.what == "pruning" else recipe(args.out))
