"""What experiment tracking costs a run (never part of `make test`):

    python -m bench.tracking_overhead [--size 2000] [--repeats 2]

The packaged sentiment-lora recipe on a subsample, 1 epoch, as `tunelab train` in a fresh process per
run, with tracking.backends = [] / [mlflow] / [mlflow, wandb, tensorboard] (W&B offline), arms
alternated. Reported: training seconds (the loop, where the trackers' per-step calls land) and wall
seconds of the whole command (imports, store creation, artifact upload included).
Results: bench/results/<cpu kind>/tracking_overhead.json and .md, with the CPU.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

from bench.common import machine, results_dir, scratch_dir

ARMS = {"none": "[]", "mlflow": "[mlflow]", "all three": "[mlflow,wandb,tensorboard]"}


def one(arm: str, size: int, root: Path, i: int) -> dict:
    out = root / f"{arm.replace(' ', '-')}-{i}"
    env = {**os.environ, "WANDB_MODE": "offline", "PYTHONWARNINGS": "ignore"}
    t0 = time.perf_counter()
    subprocess.run([sys.executable, "-m", "tunelab", "train", "sentiment-lora", f"data.max_train_samples={size}",
                    "train.epochs=1", f"tracking.backends={ARMS[arm]}", f"output.root={root}", f"output.dir={out}"],
                   check=True, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wall = time.perf_counter() - t0
    s = json.loads((out / "summary.json").read_text())
    return {"arm": arm, "train_seconds": s["train_seconds"], "wall_seconds": round(wall, 1), "steps": s["steps"]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--size", type=int, default=2000)
    ap.add_argument("--repeats", type=int, default=2)
    args = ap.parse_args()
    root = Path(scratch_dir())
    runs = [one(arm, args.size, root, i) for i in range(args.repeats) for arm in ARMS]
    summary = {arm: {k: round(statistics.median(r[k] for r in runs if r["arm"] == arm), 1)
                     for k in ("train_seconds", "wall_seconds")} for arm in ARMS}
    record = {"machine": machine(), "size": args.size, "repeats": args.repeats, "runs": runs, "median": summary}
    out = results_dir()
    out.mkdir(parents=True, exist_ok=True)
    (out / "tracking_overhead.json").write_text(json.dumps(record, indent=2) + "\n")
    m = record["machine"]
    lines = ["# Tracking overhead", "", f"`tunelab train sentiment-lora` on {args.size} tweets x 1 epoch "
             f"({runs[0]['steps']} steps), one fresh process per run, arms alternated, median of {args.repeats}.",
             f"CPU: {m['cpu']} ({' '.join(m['cpu_flags'])}), {m['cores']} cores.", "",
             "| tracking.backends | train s | wall s | wall vs none |", "|---|---|---|---|"]
    base = summary["none"]["wall_seconds"]
    for arm, v in summary.items():
        lines.append(f"| {ARMS[arm]} | {v['train_seconds']} | {v['wall_seconds']} | {v['wall_seconds'] - base:+.1f} s |")
    (out / "tracking_overhead.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
