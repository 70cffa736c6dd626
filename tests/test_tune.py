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
    tune("sentiment-tiny", [*FAST, "tune.rank_start=2", "tune.rank_max=16", "tune.min_gain=1.0",
                            "tracking.backends=[mlflow]", f"tracking.uri=sqlite:///{tmp_path / 'ml.db'}"],
         out=str(root), rank=True, show_progress=False)
    rows = trials_csv(root)
    assert [r["method.r"] for r in rows] == ["2", "4"]
    assert [r["method.alpha"] for r in rows] == ["4.0", "8.0"]  # alpha = 2 r: the LoRA scale stays fixed
    assert int(rows[0]["trainable params"]) < int(rows[1]["trainable params"])
    report = (root / "report.md").read_text()
    assert "## Rank selection" in report and "Recommended: method.r=2" in report  # within min_gain of the best
    # tracked: the study is a parent run, each trial's training a child run with its rank as a param
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'ml.db'}")
    runs = client.search_runs([client.get_experiment_by_name("sentiment-tiny").experiment_id])
    parent = [r for r in runs if r.data.tags.get("tunelab.kind") == "tune"]
    assert len(parent) == 1 and "trials.csv" in {a.path for a in client.list_artifacts(parent[0].info.run_id)}
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent[0].info.run_id]
    assert sorted(r.data.params["method.r"] for r in children) == ["2", "4"]
    best = max(m.value for r in children for m in client.get_metric_history(r.info.run_id, "validation/macro_f1"))
    assert parent[0].data.metrics["best/macro_f1"] == pytest.approx(best)


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


def test_energy_rank_reads_the_spectrum():
    import torch

    from tunelab.search.layer_rank import energy_rank

    u, _ = torch.linalg.qr(torch.randn(16, 16))
    v, _ = torch.linalg.qr(torch.randn(12, 12))
    s = torch.tensor([3.0, 2.0, 1.0] + [0.0] * 9)
    delta = u[:, :12] @ torch.diag(s) @ v.T  # singular values 3, 2, 1: energies 9, 4, 1 of 14
    assert energy_rank(delta, 9 / 14) == 1 and energy_rank(delta, 0.9) == 2 and energy_rank(delta, 1.0) == 3


def test_per_layer_rank_trains_the_pattern_beside_uniform_and_adalora(tmp_path):
    from tunelab.search import tune

    root = tmp_path / "layers"
    tune("sentiment-tiny", [*FAST, "tune.strategy=layer_rank", "tune.probe_rank=8", "tune.probe_steps=4",
                            "tune.energy=0.8", "tune.keep_trial_runs=true"], out=str(root), show_progress=False)
    rows = {r["variant"]: r for r in trials_csv(root)}
    assert set(rows) == {"probe", "per-layer", "uniform", "adalora"} and all(r["state"] == "complete" for r in rows.values())
    study = optuna.load_study(study_name="tune-sentiment-tiny", storage=f"sqlite:///{root / 'study.db'}")
    ranks = {tr.user_attrs["variant"]: tr for tr in study.trials}["probe"].user_attrs["layer_ranks"]
    assert len(ranks) == 4 and all(1 <= v["rank"] <= 8 for v in ranks.values())  # 2 layers x query, value
    # per-layer and uniform train about the same number of LoRA parameters (the head is the same)
    a, b = int(rows["per-layer"]["trainable params"]), int(rows["uniform"]["trainable params"])
    assert abs(a - b) <= 0.5 * b
    assert "## Per-layer rank" in (root / "report.md").read_text()
    trial_dir = root / "trials" / f"trial-{int(rows['per-layer']['trial']):04d}"
    cfg = yaml.safe_load((trial_dir / "config.yaml").read_text())
    assert cfg["method"]["rank_pattern"] == {k: v["rank"] for k, v in ranks.items()}


def test_a_diverging_trial_is_recorded_as_failed_and_the_study_goes_on(tmp_path):
    from tunelab.search import tune

    root = tmp_path / "nan"
    tune("sentiment-tiny", [*FAST, "train.max_grad_norm=null", "train.warmup_ratio=0", "train.precision=fp32",
                            "tune.space.train.lr={choices: [1.0e+30, 2.0e-3]}", "tune.sampler=grid"],
         out=str(root), n_trials=2, show_progress=False)
    rows = {float(r["train.lr"]): r for r in trials_csv(root)}
    assert rows[1e30]["state"] == "fail" and "loss is nan" in rows[1e30]["error"]
    assert rows[2e-3]["state"] == "complete" and float(rows[2e-3]["macro_f1"]) > 0
    from tunelab.config import load_config

    assert load_config(str(root / "best.yaml")).train.lr == 2e-3


def test_isolated_trials_report_to_the_same_study_and_a_failing_child_fails_only_its_trial(tmp_path):
    from tunelab.search import tune

    root = tmp_path / "iso"
    tune("sentiment-tiny", [*FAST, "train.max_grad_norm=null", "train.warmup_ratio=0", "train.precision=fp32",
                            "tune.isolate_trials=true", "tune.space.train.lr={choices: [1.0e+30, 2.0e-3]}",
                            "tune.sampler=grid"], out=str(root), n_trials=2, show_progress=False)
    rows = {float(r["train.lr"]): r for r in trials_csv(root)}
    assert rows[1e30]["state"] == "fail" and "loss is nan" in rows[1e30]["error"]
    assert rows[2e-3]["state"] == "complete" and float(rows[2e-3]["macro_f1"]) > 0
    info = yaml.safe_load((root / "tune.json").read_text())
    study = optuna.load_study(study_name=info["study"], storage=info["storage"])
    ok = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE][0]
    # the child process reported each validation to the parent's trial: the pruner sees them
    assert len(ok.intermediate_values) >= 2 and ok.value == pytest.approx(max(ok.intermediate_values.values()))
