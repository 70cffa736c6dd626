"""Two ways to run the same Flower apps, both Flower's own engines:

- simulation: `flwr.simulation.run_simulation` on this machine. Flower's simulation engine runs each
  virtual SuperNode's ClientApp in a Ray actor (a process of its own; `federated.client_threads` torch
  threads each, `parallel_clients` at once) and the ServerApp in a thread of this process;
- deployment: a running `flower-superlink` and one `flower-supernode` per client (other processes,
  other machines), each started with `--node-config "partition='<its folder>'"` (or `data='<its own
  file>'`); `flwr run` submits the app with the run folder in its run config.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from pathlib import Path

from tunelab.config.federated import FederatedConfig
from tunelab.errors import TunelabError


def quiet_flower() -> None:
    """No telemetry; Flower's own log at warnings (tunelab prints one line per round, and the rounds
    are in federated/rounds.jsonl)."""
    import logging

    os.environ.setdefault("FLWR_TELEMETRY_ENABLED", "0")  # no network here, and none wanted
    logging.getLogger("flwr").setLevel(logging.WARNING)
    os.environ.setdefault("RAY_DEDUP_LOGS", "1")
    os.environ.setdefault("RAY_ENABLE_UV_RUN_RUNTIME_ENV", "0")  # actors use this interpreter, as it is


def simulate(run_dir: Path, partitions: Path, fed: FederatedConfig) -> None:
    quiet_flower()
    from flwr.simulation import run_simulation

    from tunelab.federated.app import client_app
    from tunelab.federated.server import make_server_app

    cores = os.cpu_count() or 1
    parallel = fed.parallel_clients or max(1, cores // fed.client_threads)
    backend = {"client_resources": {"num_cpus": fed.client_threads, "num_gpus": 0.0},
               "init_args": {"num_cpus": parallel * fed.client_threads, "num_gpus": 0, "include_dashboard": False,
                             "log_to_driver": False}}
    run_simulation(server_app=make_server_app(run_dir, partitions), client_app=client_app,
                   num_supernodes=fed.clients, backend_config=backend)
    if not (run_dir / "summary.json").is_file():
        raise TunelabError(f"the federated simulation ended without a result; see {run_dir / 'federated'} and the "
                           "Flower log above")


def deploy(run_dir: Path, superlink: str, app_dir: Path | None = None) -> None:
    """Submit the run to a SuperLink (its Control API address, default port 9093) and stream its log."""
    quiet_flower()
    from tunelab.federated.app import app_folder

    app = app_folder(app_dir or run_dir / "flower-app")
    home = Path(tempfile.mkdtemp(prefix="tunelab-flwr-"))
    (home / "config.toml").write_text(
        f'[superlink]\ndefault = "tunelab"\n\n[superlink.tunelab]\naddress = "{superlink}"\ninsecure = true\n',
        encoding="utf-8")
    flwr = Path(sys.executable).with_name("flwr")
    cmd = [str(flwr if flwr.exists() else "flwr"), "run", str(app), "tunelab", "--stream",
           "--run-config", f"run-dir='{run_dir.resolve()}'"]
    env = {**os.environ, "FLWR_HOME": str(home)}
    try:
        proc = subprocess.run(cmd, env=env)
    except FileNotFoundError:
        raise TunelabError("the `flwr` command is not installed; reinstall tunelab (flwr is one of its dependencies)") from None
    if proc.returncode != 0 or not (run_dir / "summary.json").is_file():
        raise TunelabError(f"the federated run on SuperLink {superlink} did not finish (flwr run exit {proc.returncode}); "
                           f"see its log above and {run_dir / 'federated'}")
