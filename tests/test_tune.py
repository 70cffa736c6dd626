"""`tunelab tune` on the tiny packaged BERT: a study's outputs and resume, plain Optuna reading it,
bad search spaces refused before any trial, two workers sharing one storage, a worker killed
mid-trial, and rank selection."""

from __future__ import annotations

import csv
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest
import yaml

from conftest import TINY, one_line_error

FAST = [*TINY, "data.max_train_samples=160", "data.max_eval_samples=96", "train.epochs=2", "train.eval_every_steps=2",
        "train.early_stopping_patience=null"]
SPACE = ["tune.space.train.lr={log_uniform: [1.0e-4, 1.0e-2]}", "tune.space.method.r={choices: [2, 4]}",
         "tune.sampler=random", "tune.startup_trials=1"]


def trials_csv(root: Path) -> list[dict]:
    with open(root / "trials.csv", newline="") as f:
        return list(csv.DictReader(f))


def test_a_study_writes_its_outputs_resumes_and_plain_optuna_reads_it(tmp_path):
    from tunelab.config import load_config
    from tunelab.search import tune

    root = tmp_path / "study"
    tune("sentiment-tiny", [*FAST, *SPACE], out=str(root), n_trials=3, show_progress=False)
    rows = trials_csv(root)
    assert [r["trial"] for r in rows] == ["0", "1", "2"] and all(r["state"] in ("complete", "pruned") for r in rows)
    assert {"macro_f1", "train.lr", "method.r", "pruned at step"} <= set(rows[0])

    info = yaml.safe_load((root / "tune.json").read_text())
    study = optuna.load_study(study_name=info["study"], storage=info["storage"])  # plain Optuna
    assert len(study.trials) == 3 and study.direction == optuna.study.StudyDirection.MAXIMIZE
    best = study.best_trial
    # best.yaml is a recipe: it validates and carries the best trial's values
    cfg = load_config(str(root / "best.yaml"))
    assert cfg.train.lr == pytest.approx(best.params["train.lr"]) and cfg.method.r == best.params["method.r"]
    assert cfg.data.max_train_samples == 160  # the user's overrides are in it too
    report = (root / "report.md").read_text()
    assert "optimization_history.png" in report and "<table>" in (root / "report.html").read_text()
    # the objective is validation, never test: each trial's run folder has no test evaluation
    trial_dir = Path(best.user_attrs["run"])
    assert (trial_dir / "metrics.jsonl").is_file() and not (trial_dir / "summary.json").exists()
    assert not (trial_dir / "checkpoints").exists()  # trials keep metrics and config only

    tune("sentiment-tiny", [*FAST, *SPACE], out=str(root), n_trials=4, show_progress=False)  # resumes: one more
    assert [r["trial"] for r in trials_csv(root)] == ["0", "1", "2", "3"]


@pytest.mark.parametrize("extra, pattern", [
    (["tune.space.train.lrr={log_uniform: [1.0e-4, 1.0e-2]}"], r"tune.space.train.lrr=.*unknown key 'train.lrr'; did you mean 'train.lr'"),
    (["tune.space.method.r={choices: []}"], r"choices: the list is empty"),
    (["tune.space.train.lr={uniform: [0.1, 0.01]}"], r"low 0.1 > high 0.01"),
    (["tune.space.train.lr={log_uniform: [1.0e-4, 1.0e-2]}", "tune.metric=rougeL"],
     r"tune.metric 'rougeL' is not a validation metric of task 'classification'.*macro_f1"),
    (["tune.space.method.r={choices: [2, 0]}"], r"method.r=0: method.r: input should be greater than or equal to 1"),
    ([], r"tune.space is empty"),
])
def test_bad_search_spaces_fail_in_one_line_before_any_trial(tmp_path, extra, pattern):
    from tunelab.search import tune

    one_line_error(lambda: tune("sentiment-tiny", [*FAST, *extra], out=str(tmp_path / "s"), show_progress=False), pattern)
    assert not (tmp_path / "s").exists()


def test_rank_selection_doubles_until_it_stops_paying(tmp_path):
    from tunelab.search import tune

    root = tmp_path / "rank"
    # min_gain 1.0 can never be beaten: the doubling stops after the second rank
    tune("sentiment-tiny", [*FAST, "tune.rank_start=2", "tune.rank_max=16", "tune.min_gain=1.0"], out=str(root),
         rank=True, show_progress=False)
    rows = trials_csv(root)
    assert [r["method.r"] for r in rows] == ["2", "4"]
    assert [r["method.alpha"] for r in rows] == ["4.0", "8.0"]  # alpha = 2 r: the LoRA scale stays fixed
    assert int(rows[0]["trainable params"]) < int(rows[1]["trainable params"])
    report = (root / "report.md").read_text()
    assert "## Rank selection" in report and "Recommended: method.r=2" in report  # within min_gain of the best


def _worker(root: Path, storage: str, n: int, *extra: str) -> subprocess.Popen:
    env = {**os.environ, "PYTHONWARNINGS": "ignore", "COLUMNS": "200"}
    return subprocess.Popen([sys.executable, "-m", "tunelab", "tune", "sentiment-tiny", *FAST, *SPACE, *extra,
                             "--storage", storage, "--study", "shared", "--out", str(root), "--n-trials", str(n)],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)


@pytest.mark.slow
def test_two_workers_share_one_study_and_a_killed_worker_leaves_a_failed_trial(tmp_path):
    storage = f"sqlite:///{tmp_path / 'shared.db'}"
    a, b = _worker(tmp_path / "w", storage, 4), _worker(tmp_path / "w", storage, 4)
    out_a, out_b = a.communicate(timeout=900)[0], b.communicate(timeout=900)[0]
    assert a.returncode == 0 and b.returncode == 0, out_a[-2000:] + out_b[-2000:]
    study = optuna.load_study(study_name="shared", storage=storage)
    numbers = [t.number for t in study.trials]
    assert len(numbers) == len(set(numbers)) and sorted(numbers) == list(range(len(numbers)))
    assert 4 <= len(numbers) <= 5  # each worker stops once the study has 4; both may have started the 4th
    workers = {t.user_attrs["worker"] for t in study.trials}
    assert len(workers) == 2  # both did work

    # A third worker is killed mid-trial; the next worker marks that trial failed and goes on.
    c = _worker(tmp_path / "w", storage, 7, "tune.heartbeat_seconds=1")
    deadline = time.time() + 300
    while time.time() < deadline:
        running = [t for t in optuna.load_study(study_name="shared", storage=storage).trials
                   if t.state == optuna.trial.TrialState.RUNNING]
        if running:
            break
        assert c.poll() is None, c.communicate()[0][-3000:]
        time.sleep(0.2)
    c.send_signal(signal.SIGKILL)  # at once: a tiny trial lasts a few seconds
    c.wait()
    killed = running[0].number
    time.sleep(4)  # past the grace period (3 heartbeats)
    d = _worker(tmp_path / "w", storage, 7, "tune.heartbeat_seconds=1")
    out_d = d.communicate(timeout=900)[0]
    assert d.returncode == 0, out_d[-3000:]
    trials = {t.number: t for t in optuna.load_study(study_name="shared", storage=storage).trials}
    assert trials[killed].state == optuna.trial.TrialState.FAIL
    assert sum(t.state != optuna.trial.TrialState.RUNNING for t in trials.values()) == len(trials) >= 7
