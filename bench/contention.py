"""A training run alone vs beside one busy process on the same cores (never part of `make test`):

    python -m bench.contention [--size 640] [--repeats 2]

`tunelab train sentiment-lora` on --size tweets x 1 epoch (640: the issue's run), one fresh process per run,
alone and next to a busy-looping process, with OpenMP's wait policy unset (torch's default: libgomp's threads spin a while at every barrier)
and PASSIVE (idle threads sleep). Results:
bench/results/contention-<size>.json and .md, with the CPU.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

from bench.common import machine, scratch_dir

RESULTS = Path(__file__).resolve().parent / "results"


def one(policy: str, busy: bool, root: Path, i: int, size: int) -> float:
    out = root / f"{policy}-{'busy' if busy else 'alone'}-{i}"
    hog = subprocess.Popen([sys.executable, "-c", "while True: pass"]) if busy else None
    try:
        env = {**{k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}, "TUNELAB_TRACKING": "none"}
        # "unset" must reach the child as unset: the CLI only sets PASSIVE when the variable is absent
        env["OMP_WAIT_POLICY"] = policy if policy != "unset" else ""
        subprocess.run([sys.executable, "-m", "tunelab", "train", "sentiment-lora", f"data.max_train_samples={size}",
                        "train.epochs=1", "eval.before=false", f"output.dir={out}"], check=True, env=env,
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    finally:
        if hog:
            hog.kill()
    return json.loads((out / "summary.json").read_text())["train_seconds"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--size", type=int, default=640)
    args = ap.parse_args()
    root = Path(scratch_dir())
    runs = [{"policy": p, "busy": b, "train_seconds": one(p, b, root, i, args.size)}
            for i in range(args.repeats) for p in ("unset", "PASSIVE") for b in (False, True)]
    med = {(p, b): statistics.median(r["train_seconds"] for r in runs if r["policy"] == p and r["busy"] == b)
           for p in ("unset", "PASSIVE") for b in (False, True)}
    m = machine()
    record = {"machine": m, "size": args.size, "repeats": args.repeats, "runs": runs,
              "median": {f"{p} {'busy' if b else 'alone'}": v for (p, b), v in med.items()}}
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / f"contention-{args.size}.json").write_text(json.dumps(record, indent=2) + "\n")
    lines = ["# Training beside a busy process", "",
             f"`tunelab train sentiment-lora` on {args.size} tweets x 1 epoch (batch 32), training seconds, median of "
             f"{args.repeats}; busy = one `while True: pass` process on the same cores.",
             f"CPU: {m['cpu']} ({' '.join(m['cpu_flags'])}), {m['cores']} cores.", "",
             "| OMP_WAIT_POLICY | alone s | busy s | busy / alone |", "|---|---|---|---|"]
    for p in ("unset", "PASSIVE"):
        lines.append(f"| {p}{' (torch / libgomp default)' if p == 'unset' else ''} | {med[(p, False)]:.1f} | "
                     f"{med[(p, True)]:.1f} | {med[(p, True)] / med[(p, False)]:.2f}x |")
    (RESULTS / f"contention-{args.size}.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
