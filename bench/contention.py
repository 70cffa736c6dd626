"""A training run alone vs beside one busy process on the same cores (never part of `make test`):

    python -m bench.contention [--size 640] [--repeats 2]

`tunelab train sentiment-lora` on --size tweets x 1 epoch (640: the issue's run) and the HF Trainer baseline
on the same tweets (`bench.sentiment --impl hf`), one fresh process per run, alone and next to a busy-looping
process, with OpenMP's wait policy unset (torch's default: libgomp's threads spin a while at every barrier),
PASSIVE (idle threads sleep) and, for tunelab, nothing set (the CLI's own choice: a short spin,
GOMP_SPINCOUNT=10000). Results: bench/results/<cpu kind>/contention-<size>.json and .md, with the CPU.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

from bench.common import ISA_ENV, machine, results_dir, scratch_dir
from bench.sentiment import SAME_AS_HF

ROOT = Path(__file__).resolve().parent.parent
SIDES = ("tunelab", "hf")


def one(side: str, policy: str, busy: bool, root: Path, i: int, size: int) -> float:
    out = root / f"{side}-{policy.replace(' ', '-')}-{'busy' if busy else 'alone'}-{i}"
    hog = subprocess.Popen([sys.executable, "-c", "while True: pass"]) if busy else None
    try:
        env = {**{k: v for k, v in os.environ.items() if k not in ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT")},
               "TUNELAB_TRACKING": "none",
               "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), str(ROOT), os.environ.get("PYTHONPATH", "")])}
        # "unset" reaches the child as an empty value, which libgomp ignores; the tunelab CLI sets its spin
        # count only when neither variable is there ("tunelab default")
        if policy != "tunelab default":
            env["OMP_WAIT_POLICY"] = policy if policy != "unset" else ""
        if side == "tunelab":
            subprocess.run([sys.executable, "-m", "tunelab", "train", "sentiment-lora", f"data.max_train_samples={size}",
                            *SAME_AS_HF, "train.epochs=1", "eval.before=false", f"output.dir={out}"], check=True, env=env,
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            return json.loads((out / "summary.json").read_text())["train_seconds"]
        # the baseline as a user runs it: torch's own kernel-cache sizes (bench.run does the same)
        env.update(ONEDNN_PRIMITIVE_CACHE_CAPACITY="1024", LRU_CACHE_CAPACITY="1024")
        proc = subprocess.run([sys.executable, "-m", "bench.sentiment", "--impl", side, "--size", str(size)],
                              check=True, env=env, capture_output=True, text=True, cwd=ROOT)
        line = next(x for x in reversed(proc.stdout.splitlines()) if x.startswith("BENCH_RECORD "))
        return json.loads(line[len("BENCH_RECORD "):])["train_seconds"]
    finally:
        if hog:
            hog.kill()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--size", type=int, default=640)
    ap.add_argument("--sides", default=",".join(SIDES), help="tunelab, hf or both (comma-separated)")
    ap.add_argument("--isa", choices=list(ISA_ENV), help="hold torch's kernels to this instruction set (bench.run --isa)")
    args = ap.parse_args()
    os.environ.update(ISA_ENV.get(args.isa, {}))
    root, sides = Path(scratch_dir()), args.sides.split(",")
    policies = {s: ("unset", "PASSIVE", "tunelab default") if s == "tunelab" else ("unset", "PASSIVE") for s in sides}
    runs = [{"side": s, "policy": p, "busy": b, "train_seconds": one(s, p, b, root, i, args.size)}
            for i in range(args.repeats) for s in sides for p in policies[s] for b in (False, True)]
    med = {(s, p, b): statistics.median(r["train_seconds"] for r in runs
                                        if r["side"] == s and r["policy"] == p and r["busy"] == b)
           for s in sides for p in policies[s] for b in (False, True)}
    m = machine()
    record = {"machine": m, "size": args.size, "repeats": args.repeats, "runs": runs,
              "median": {f"{s} {p} {'busy' if b else 'alone'}": v for (s, p, b), v in med.items()}}
    out = results_dir()
    out.mkdir(parents=True, exist_ok=True)
    (out / f"contention-{args.size}.json").write_text(json.dumps(record, indent=2) + "\n")
    lines = ["# Training beside a busy process", "",
             f"sentiment LoRA on {args.size} tweets x 1 epoch (batch 32): `tunelab train sentiment-lora` and the HF "
             f"Trainer baseline (`bench.sentiment --impl hf`); training seconds, median of {args.repeats}; busy = one "
             "`while True: pass` process on the same cores. Unless the user set OMP_WAIT_POLICY or GOMP_SPINCOUNT, the "
             "tunelab CLI sets GOMP_SPINCOUNT=10000 (`tunelab default`); `unset` is what torch gives a user who sets "
             "nothing.",
             f"CPU: {m['cpu']} (kind {m['cpu_kind']}, {' '.join(m['cpu_flags'])}), {m['cores']} cores"
             + (f", kernels capped by {m['isa_cap']}" if m.get("isa_cap") else "") + ".", "",
             "| side | OMP_WAIT_POLICY | alone s | busy s | busy / alone |", "|---|---|---|---|---|"]
    for s in sides:
        for p in policies[s]:
            lines.append(f"| {s} | {p}{' (torch / libgomp default)' if p == 'unset' else ''} | {med[(s, p, False)]:.1f} | "
                         f"{med[(s, p, True)]:.1f} | {med[(s, p, True)] / med[(s, p, False)]:.2f}x |")
    (out / f"contention-{args.size}.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
