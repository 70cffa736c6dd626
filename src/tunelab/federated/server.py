"""The server side of a federated run: the global model is an ordinary Session on the run folder
(the full validation and test splits, no training of its own). Flower's strategy drives the rounds;
after each one the global state is evaluated on validation, logged to metrics.jsonl (one validation
record per round), kept as best/ when it improves and saved as the resume point; at the end the
Session's own steps write the test split after, the adapter, the report and summary.json, so
`tunelab eval / predict / serve / export` take the folder unchanged.

    <run>/federated/rounds.jsonl     one line per round: global metrics, clients and their metrics,
                                     left-out clients with the reason, bytes, seconds
    <run>/federated/global.safetensors + state.json   the last completed round (resume point)
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import torch
from flwr.app import ArrayRecord, ConfigRecord, Context, MetricRecord
from flwr.serverapp import Grid, ServerApp
from safetensors.torch import load_file, save_file

from tunelab.console import console
from tunelab.federated.strategy import Guarded, base_strategy, privacy_accountant, with_privacy
from tunelab.models.state import count_parameters
from tunelab.runs.io import atomic_write_json, atomic_write_text
from tunelab.runs.rundir import RunDir
from tunelab.session import Session
from tunelab.train.callbacks import save_best


class GlobalModel:
    """The run folder's Session and the rounds' records."""

    def __init__(self, run_dir: str | Path, partitions: str | Path | None = None):
        self.run = RunDir.open(run_dir)
        self.cfg = self.run.config()
        self.fed = self.cfg.federated
        self.dir = self.run.path / "federated"
        self.dir.mkdir(exist_ok=True)
        self.partitions = Path(partitions) if partitions else None
        state = self.read_state()
        self.session = Session(self.cfg, self.run, resume=state is not None)
        self.session.prepare()
        self.session.evaluate_before()
        self.done = state["round"] if state else 0
        if state:  # what was logged after the resume point belongs to a round that never completed
            self.run.truncate_metrics(self.done)
            kept = [r for r in self.rounds() if r["round"] <= self.done]
            atomic_write_text(self.dir / "rounds.jsonl", "".join(json.dumps(r) + "\n" for r in kept))
            console.print(f"Resuming the federation after round {self.done} of {self.fed.rounds}")
        self.best = state.get("best") if state else None
        self.t0 = time.perf_counter() - (state["seconds"] if state else 0.0)
        self.strategy: Guarded | None = None
        self.accountant = None

    # -- state ----------------------------------------------------------------------------------
    def read_state(self) -> dict | None:
        p = self.dir / "state.json"
        return json.loads(p.read_text(encoding="utf-8")) if p.is_file() else None

    def initial_arrays(self) -> ArrayRecord:
        s = self.session
        if self.done:
            state = load_file(self.dir / "global.safetensors")
        else:
            state = s.method.trainable_state(s.model)
        return ArrayRecord(state)

    def load(self, arrays: ArrayRecord) -> None:
        s = self.session
        s.method.load_trainable_state(s.model, {k: v.to(torch.float32) if v.is_floating_point() else v
                                                for k, v in arrays.to_torch_state_dict().items()})

    # -- the rounds -----------------------------------------------------------------------------
    def train_config(self) -> ConfigRecord:
        s = self.session
        cfg = {"tunelab-config": json.dumps(self.cfg.model_dump(mode="json")), "labels": json.dumps(s.task.labels)}
        if self.partitions:
            cfg["partitions"] = str(self.partitions)
        if self.fed.client_threads:
            cfg["client-threads"] = self.fed.client_threads
        return ConfigRecord(cfg)

    def evaluate(self, server_round: int, arrays: ArrayRecord) -> MetricRecord | None:
        """Flower's evaluate_fn: the global model on validation (round 0: the starting state)."""
        s, r = self.session, server_round + self.done
        self.load(arrays)
        metrics = s.task.validate(s.model)
        numbers = {k: float(v) for k, v in metrics.items() if isinstance(v, (int, float))}
        if server_round == 0:
            if not self.done:
                atomic_write_json(self.dir / "round0.json", numbers)
            return MetricRecord(numbers)
        value = numbers[s.metric]
        higher = s.task.higher_is_better.get(s.metric, True)
        improved = self.best is None or (value > self.best["value"] if higher else value < self.best["value"])
        if improved:
            self.best = {"round": r, "value": value}
            save_best(self.run, s.model, s.method)
        rec = self.strategy.rounds.get(r, {"round": r}) if self.strategy else {"round": r}
        rec.update(validation=numbers, best=improved, seconds=round(time.perf_counter() - self.t0, 1))
        if self.accountant is not None:
            spent = self.accountant.get_privacy_spent()
            rec["privacy"] = {"epsilon": spent.epsilon, "delta": spent.delta, "releases": spent.num_releases,
                              "method": spent.accounting_method}
        self.run.log({"step": r, "split": "validation", **numbers})
        with open(self.dir / "rounds.jsonl", "a", encoding="utf-8") as f:
            f.write(json.dumps(rec) + "\n")
        # The resume point: the global state after round r, written before the round counts as done.
        tmp = self.dir / ".global.tmp"
        save_file({k: v.contiguous() for k, v in s.method.trainable_state(s.model).items()}, tmp)
        tmp.replace(self.dir / "global.safetensors")
        atomic_write_json(self.dir / "state.json", {"round": r, "best": self.best,
                                                    "seconds": time.perf_counter() - self.t0})
        left = ", ".join(f"{x['client']} ({x['reason']})" for x in rec.get("left_out", []))
        console.print(f"  round {r:>3}/{self.fed.rounds}  val {s.metric} {value:.4f}"
                      + ("  [green]best[/]" if improved else "") + (f"  [yellow]left out:[/] {left}" if left else ""))
        return MetricRecord(numbers)

    def run_rounds(self, grid: Grid) -> None:
        fed, clients = self.fed, self.fed.clients
        remaining = fed.rounds - self.done
        if remaining > 0:
            self.accountant = privacy_accountant(fed, clients)
            inner = with_privacy(base_strategy(fed, clients), fed, clients, self.accountant)
            self.strategy = Guarded(inner, round_offset=self.done, min_replies=fed.min_clients)
            console.print(f"[bold]Federated[/] {fed.strategy}, {clients} clients, rounds {self.done + 1}-{fed.rounds}"
                          + (f", DP noise {fed.dp.noise} clip {fed.dp.clip} ({fed.dp.clipping} clipping)" if fed.dp else ""))
            self.strategy.start(grid, self.initial_arrays(), num_rounds=remaining, timeout=fed.round_timeout_s,
                                train_config=self.train_config(), evaluate_fn=self.evaluate)
        self.finish()

    def finish(self) -> None:
        """The Session's own last steps on the best global round: test after, adapter, report, summary."""
        s = self.session
        rounds = self.rounds()
        trainable, total = count_parameters(s.model)
        s.state = {"step": len(rounds), "total_steps": self.fed.rounds, "best_step": (self.best or {}).get("round"),
                   "best_metric": (self.best or {}).get("value"), "stopped_early": False, "stop_reason": None,
                   "train_seconds": rounds[-1]["seconds"] if rounds else 0.0}
        if not s.run_dir.best_dir.exists():
            raise RuntimeError("no federated round completed (every client failed?): see federated/rounds.jsonl")
        s.evaluate()
        s.save()
        atomic_write_json(self.dir / "federated.json", federated_summary(self.cfg, rounds, trainable, total,
                                                                       self.read_json("round0.json")))
        s.summary()

    def rounds(self) -> list[dict]:
        p = self.dir / "rounds.jsonl"
        return [json.loads(x) for x in p.read_text(encoding="utf-8").splitlines() if x.strip()] if p.is_file() else []

    def read_json(self, name: str):
        p = self.dir / name
        return json.loads(p.read_text(encoding="utf-8")) if p.is_file() else None


def federated_summary(cfg, rounds: list[dict], trainable: int, total_params: int, round0: dict | None) -> dict:
    sent = sum(r.get("bytes_sent", 0) for r in rounds)
    received = sum(r.get("bytes_received", 0) for r in rounds)
    fed = cfg.federated
    return {"strategy": fed.strategy, "clients": fed.clients, "rounds": len(rounds), "partition": fed.partition.model_dump(),
            "dp": fed.dp.model_dump() if fed.dp else None, "trainable_params": trainable, "total_params": total_params,
            # what one update would weigh if the whole model travelled (fp32), as in full fine-tuning
            "full_model_bytes": 4 * total_params,
            "bytes_sent": sent, "bytes_received": received, "round0_validation": round0,
            "left_out": [{"round": r["round"], **x} for r in rounds for x in r.get("left_out", [])],
            "privacy": rounds[-1].get("privacy") if rounds else None}


def make_server_app(run_dir: str | Path | None = None, partitions: str | Path | None = None) -> ServerApp:
    """The ServerApp: for a simulation, bound to its run folder here; in a deployment, the run folder
    comes from the run config (`flwr run ... --run-config "run-dir='...'"`)."""
    app = ServerApp()

    @app.main()
    def main(grid: Grid, context: Context) -> None:
        folder = run_dir or context.run_config["run-dir"]
        parts = partitions or context.run_config.get("partitions") or None
        with RunDir.open(folder).hold():  # `tunelab runs` shows it running; a second server is refused
            GlobalModel(folder, parts).run_rounds(grid)

    return app
