"""Optuna's side: the storage (where a study lives, shared by every worker that opens it), the
sampler, the pruner, and the study itself. Everything here is plain Optuna, so
`optuna.load_study(storage=..., study_name=...)`, optuna-dashboard and a user's own scripts read a
tunelab study as any other."""

from __future__ import annotations

import time
import warnings
from pathlib import Path

import optuna

from sqlalchemy.exc import IntegrityError, OperationalError

from tunelab.config.tune import TuneConfig
from tunelab.errors import TunelabError
from tunelab.runs.io import sqlite_creation_lock

RDB_PREFIXES = ("sqlite:", "postgresql", "mysql", "oracle", "mssql")


def storage_url(storage: str | None, out_dir: Path) -> str:
    """The default: a SQLite file in the study folder. A path ending in .log/.jsonl (or `journal:PATH`)
    is an Optuna journal file, the choice for a shared disk without a database server."""
    return storage or f"sqlite:///{(out_dir / 'study.db').resolve()}"


def _rdb(url: str, heartbeat_seconds: int | None):
    # SQLite: workers wait for each other's writes (default 5 s) up to a minute instead of failing
    engine = {"connect_args": {"timeout": 60}} if url.startswith("sqlite:") else None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        return optuna.storages.RDBStorage(url, engine_kwargs=engine, heartbeat_interval=heartbeat_seconds,
                                          grace_period=3 * heartbeat_seconds if heartbeat_seconds else None)


def open_storage(url: str, heartbeat_seconds: int | None):
    """Heartbeats on: a worker killed mid-trial stops beating, and the next worker to start a trial
    marks that trial failed (Optuna's fail_stale_trials), so the study has no hole. None: no heartbeat
    (a trial's child process, whose parent beats for it)."""
    if url.startswith(RDB_PREFIXES):
        for attempt in range(5):
            try:
                with sqlite_creation_lock(url):
                    return _rdb(url, heartbeat_seconds)
            except (IntegrityError, OperationalError) as e:
                # Two workers creating a new storage at once both write its schema (seen in CI: "UNIQUE
                # constraint failed: alembic_version.version_num", "table ... already exists"); the one
                # that lost finds it made on the next try. SQLite is also serialized by a file lock.
                if attempt == 4 or not (isinstance(e, IntegrityError) or "already exists" in str(e)):
                    raise TunelabError(f"cannot open the study storage '{url}': {str(e).splitlines()[0]}") from None
                time.sleep(0.5 * (attempt + 1))
            except Exception as e:  # noqa: BLE001 - SQLAlchemy raises many kinds; all mean "cannot open it"
                raise TunelabError(f"cannot open the study storage '{url}': {str(e).splitlines()[0]}") from None
    path = url.removeprefix("journal:")
    if url.startswith("journal:") or path.endswith((".log", ".jsonl")):
        from optuna.storages.journal import JournalFileBackend

        Path(path).parent.mkdir(parents=True, exist_ok=True)
        return optuna.storages.JournalStorage(JournalFileBackend(path))
    raise TunelabError(f"--storage '{url}': give a database URL (sqlite:///study.db, postgresql://...) "
                       "or a journal file (study.log, journal:/shared/study.log)")


def make_sampler(t: TuneConfig, seed: int):
    if t.sampler == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    if t.sampler == "grid":
        return optuna.samplers.GridSampler({k: d.values() for k, d in t.space.items()}, seed=seed)
    if t.sampler == "cmaes":
        return optuna.samplers.CmaEsSampler(seed=seed, n_startup_trials=t.startup_trials, warn_independent_sampling=False)
    return optuna.samplers.TPESampler(seed=seed, n_startup_trials=max(1, t.startup_trials))


def make_pruner(t: TuneConfig):
    """Pruners act on the validation values the loop reports (one per train.eval_every_steps)."""
    if t.pruner == "none" or len(t.objectives) > 1:  # Optuna prunes single-objective studies only
        return optuna.pruners.NopPruner()
    if t.pruner == "halving":
        return optuna.pruners.SuccessiveHalvingPruner(min_resource=max(1, t.warmup_steps) if t.warmup_steps else "auto")
    if t.pruner == "hyperband":
        return optuna.pruners.HyperbandPruner(min_resource=max(1, t.warmup_steps))
    return optuna.pruners.MedianPruner(n_startup_trials=t.startup_trials, n_warmup_steps=t.warmup_steps)


def open_study(storage, name: str, directions: list[str], sampler, pruner, fingerprint: str) -> optuna.Study:
    """Create the study or join it. A study of another search (other recipe, space or objectives) under
    the same name is refused rather than mixed into."""
    study = optuna.create_study(storage=storage, study_name=name, directions=directions, sampler=sampler,
                                pruner=pruner, load_if_exists=True)
    theirs = study.user_attrs.get("tunelab_fingerprint")
    if theirs is None:
        study.set_user_attr("tunelab_fingerprint", fingerprint)
    elif theirs != fingerprint:
        raise TunelabError(f"study '{name}' in this storage was started by another search (other recipe, "
                           "overrides, space or objectives); use another --study name or --out folder")
    if [d.name.lower() for d in study.directions] != directions:
        raise TunelabError(f"study '{name}' optimizes {[d.name.lower() for d in study.directions]}, not {directions}")
    return study
