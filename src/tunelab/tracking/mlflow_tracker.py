"""MLflow: the resolved config as params, the step/validation/test numbers as metrics, tags, and the
adapter, report, plots and summary as artifacts. Offline by default: a SQLite store beside the runs
(`<output.root>/mlflow.db`, artifacts in `<output.root>/mlartifacts/`), which `mlflow ui
--backend-store-uri sqlite:///runs/mlflow.db` and `tunelab ui` read; a server through tracking.uri
or MLFLOW_TRACKING_URI."""

from __future__ import annotations

import os
import time
from pathlib import Path

from tunelab.config.schema import RunConfig
from tunelab.runs.io import sqlite_creation_lock
from tunelab.tracking.base import Tracker, flatten, run_tags

STATUS = {"FINISHED": "FINISHED", "FAILED": "FAILED", "KILLED": "KILLED"}


def tracking_uri(cfg: RunConfig) -> str:
    uri = cfg.tracking.uri or os.environ.get("MLFLOW_TRACKING_URI")
    if uri:
        return uri
    root = Path(cfg.output.root).resolve()
    return f"sqlite:///{root / 'mlflow.db'}"


def check_reachable(uri: str, timeout: float = 3.0) -> None:
    """A server that is down would otherwise cost MLflow's retries with backoff (minutes) per call."""
    if not uri.startswith(("http://", "https://")):
        return
    import requests

    try:
        requests.get(uri.rstrip("/") + "/health", timeout=timeout).raise_for_status()
    except requests.RequestException as e:
        raise ConnectionError(f"MLflow tracking server {uri} is not reachable ({type(e).__name__})") from None


def client_for(uri: str):
    from mlflow.tracking import MlflowClient

    check_reachable(uri)
    with sqlite_creation_lock(uri):
        client = MlflowClient(tracking_uri=uri)
        client.search_experiments(max_results=1)  # creates a new SQLite store's tables here, under the lock
    return client


def experiment_id(client, uri: str, name: str) -> str:
    exp = client.get_experiment_by_name(name)
    if exp is not None:
        return exp.experiment_id
    artifacts = None
    if uri.startswith("sqlite:///"):  # artifacts beside the store, not in ./mlruns of whatever folder we run in
        artifacts = (Path(uri.removeprefix("sqlite:///")).parent / "mlartifacts" / name).resolve().as_uri()
    try:
        return client.create_experiment(name, artifact_location=artifacts)
    except Exception:  # another process created it in between
        exp = client.get_experiment_by_name(name)
        if exp is None:
            raise
        return exp.experiment_id


def params_of(config: dict) -> dict[str, str]:
    """The resolved config as MLflow params (dotted keys; MLflow caps a value at 6,000 characters)."""
    skip = ("tune.", "compare.", "tracking.parent_id", "tracking.group")
    return {k: str(v)[:6000] for k, v in flatten(config).items() if not k.startswith(skip)}


def upload(client, run_id: str, files: dict[str, Path]) -> None:
    """Folders under their name, files at the top of the run's artifacts."""
    for name, path in files.items():
        path = Path(path)
        if path.is_dir():
            client.log_artifacts(run_id, str(path), artifact_path=name)
        elif path.is_file():
            client.log_artifact(run_id, str(path))


class MlflowTracker(Tracker):
    backend = "mlflow"

    def start(self, run):
        from mlflow.entities import Param

        uri = tracking_uri(self.cfg)
        self.client = client_for(uri)
        self.run_id = self.saved_id()
        if self.run_id:  # a resumed run continues its tracked run
            self.client.update_run(self.run_id, status="RUNNING")
            return
        exp = experiment_id(self.client, uri, self.cfg.tracking.experiment or self.cfg.name)
        tags = {**run_tags(self.cfg), "tunelab.run_dir": str(self.path.resolve())}
        if self.cfg.tracking.parent_id:
            tags["mlflow.parentRunId"] = self.cfg.tracking.parent_id
        if self.cfg.description:
            tags["mlflow.note.content"] = self.cfg.description
        self.run_id = self.client.create_run(exp, run_name=run["name"], tags=tags).info.run_id
        self.save_id(self.run_id)
        params = [Param(k, v) for k, v in params_of(run["config"]).items()]
        for i in range(0, len(params), 100):  # MLflow takes at most 100 params per batch
            self.client.log_batch(self.run_id, params=params[i : i + 100])

    def log(self, values, step):
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        # asynchronous: the loop does not wait for the store (a queue flushed at finish)
        self.client.log_batch(self.run_id, metrics=[Metric(k, v, now, step) for k, v in values.items()],
                              synchronous=False)

    def finish(self, summary, files, status):
        # this run's store, not mlflow.flush_async_logging(): that one opens the default store (./mlflow.db)
        self.client._tracking_client.store.flush_async_logging()
        upload(self.client, self.run_id, files)
        self.client.set_terminated(self.run_id, STATUS[status])


class MlflowParent:
    """A compare or tune as one MLflow run; each of its trainings is a child run (mlflow.parentRunId)."""

    def __init__(self, cfg: RunConfig, name: str, kind: str, folder: Path):
        self.uri = tracking_uri(cfg)
        self.client = client_for(self.uri)
        exp = experiment_id(self.client, self.uri, cfg.tracking.experiment or cfg.name)
        tags = {**run_tags(cfg), "tunelab.kind": kind, "tunelab.run_dir": str(Path(folder).resolve())}
        tags.pop("method", None) if kind == "compare" else None
        self.run_id = self.client.create_run(exp, run_name=name, tags=tags).info.run_id
        self.experiment = cfg.tracking.experiment or cfg.name

    def child_settings(self) -> dict:
        return {"parent_id": self.run_id, "uri": self.uri, "experiment": self.experiment}

    def log(self, values: dict[str, float], step: int | None = None) -> None:
        for k, v in values.items():
            self.client.log_metric(self.run_id, k, v, step=step or 0)

    def finish(self, files: dict[str, Path], status: str) -> None:
        upload(self.client, self.run_id, files)
        self.client.set_terminated(self.run_id, status)
