"""The server's strategy: Flower's own FedAvg / FedProx / FedAdam, optionally inside Flower's
differential-privacy wrapper, inside `Guarded`, ours, which keeps a round going when clients fail:

- a reply that is an error (the client raised, crashed or timed out) is left out, with its reason;
- an update whose tensors are not finite, or whose names or shapes differ from the global state, is
  left out before any averaging (one NaN would poison the mean, and Flower's check would raise);
- each left-out client is named in the round's record (clients say their name with their metrics,
  and a failing tunelab client puts it in its error text);
- bytes sent and received are counted per round (what travels: the trainable state only).
"""

from __future__ import annotations

import re
from collections.abc import Iterable

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord
from flwr.serverapp import Grid
from flwr.serverapp.strategy import (
    DifferentialPrivacyServerSideAdaptiveClipping,
    DifferentialPrivacyServerSideFixedClipping,
    FedAdam,
    FedAvg,
    FedProx,
    Strategy,
)

from tunelab.config.federated import FederatedConfig
from tunelab.errors import TunelabError


def base_strategy(fed: FederatedConfig, clients: int) -> FedAvg:
    """Flower's strategy for `federated.strategy`; FedAvg weights each update by its num-examples."""
    sampled = max(fed.min_clients, int(fed.fraction * clients))
    # Under DP every client weighs the same (DP-FedAvg's uniform mean: Flower's accountant requires it, and
    # n_k itself would be revealed); otherwise FedAvg's w_k = n_k / sum n.
    common = dict(fraction_train=fed.fraction, fraction_evaluate=0.0, min_train_nodes=min(sampled, clients),
                  min_available_nodes=min(fed.min_clients, clients), min_evaluate_nodes=0,
                  train_metrics_aggr_fn=aggregate_client_metrics,
                  weighted_by_key="unit-weight" if fed.dp is not None else "num-examples")
    if fed.strategy == "fedprox":
        return FedProx(proximal_mu=fed.proximal_mu, **common)
    if fed.strategy == "fedadam":
        return FedAdam(eta=fed.server_lr, tau=fed.server_tau, **common)
    return FedAvg(**common)


def aggregate_client_metrics(records, weighted_by_key: str) -> MetricRecord:
    """Weighted mean of the clients' numeric metrics (names are not numbers and are skipped)."""
    weights = [float(next(iter(r.metric_records.values()))[weighted_by_key]) for r in records]
    total = sum(weights) or 1.0
    out: dict[str, float] = {}
    for w, r in zip(weights, records):
        for k, v in next(iter(r.metric_records.values())).items():
            if isinstance(v, (int, float)) and k not in ("client-index", "unit-weight"):
                out[k] = out.get(k, 0.0) + w * float(v) / total
    out[weighted_by_key] = total
    return MetricRecord(out)


def with_privacy(strategy: FedAvg, fed: FederatedConfig, clients: int, accountant=None) -> Strategy:
    dp = fed.dp
    if dp is None:
        return strategy
    sampled = strategy.min_train_nodes
    if dp.clipping == "fixed":
        return DifferentialPrivacyServerSideFixedClipping(strategy, noise_multiplier=dp.noise, clipping_norm=dp.clip,
                                                          num_sampled_clients=sampled, accountant=accountant)
    return DifferentialPrivacyServerSideAdaptiveClipping(strategy, noise_multiplier=dp.noise, num_sampled_clients=sampled,
                                                         initial_clipping_norm=dp.clip)


def privacy_accountant(fed: FederatedConfig, clients: int):
    """Flower's RDP accountant for fixed clipping (epsilon at delta, every round a full release)."""
    dp = fed.dp
    if dp is None or dp.clipping != "fixed" or dp.noise <= 0:
        return None
    from flwr.supercore.privacy_accounting import NeighboringRelation, PrivacyConfig, SamplingMethod
    from flwr.supercore.privacy_accounting.rdp_accountant import RdpAccountant

    return RdpAccountant(PrivacyConfig(target_delta=dp.delta or 1.0 / max(2, clients) ** 2, population_size=clients,
                                       neighboring_relation=NeighboringRelation.ADD_OR_REMOVE_ONE,
                                       sampling_method=SamplingMethod.NO_AMPLIFICATION))


def nbytes(arrays: ArrayRecord) -> int:
    return int(sum(np.asarray(a.numpy()).nbytes for a in arrays.values()))


def check_update(arrays: ArrayRecord | None, reference: dict[str, tuple]) -> str | None:
    """Why an update cannot be averaged, or None."""
    if arrays is None:
        return "no arrays in the reply"
    names = set(arrays.keys())
    if names != set(reference):
        missing, extra = sorted(set(reference) - names)[:2], sorted(names - set(reference))[:2]
        return f"its tensors do not match the global state (missing {missing}, unexpected {extra})"
    for name, a in arrays.items():
        x = np.asarray(a.numpy())
        if tuple(x.shape) != reference[name]:
            return f"tensor {name} has shape {tuple(x.shape)}, the global one {reference[name]}"
        if not np.isfinite(x).all():
            return f"tensor {name} holds NaN or inf"
    return None


# A failing tunelab client raises "client <name>: <error>"; Flower wraps it in its own text (with a Ray
# traceback in simulation), so the last such line is the one to read.
_NAMED = re.compile(r"client ([\w.\-]+): ([^\n]*)")


class Guarded(Strategy):
    """Delegates to `inner` (a Flower strategy, maybe wrapped for DP); filters and records replies."""

    def __init__(self, inner: Strategy, round_offset: int = 0, min_replies: int = 1):
        super().__init__()
        self.inner, self.offset, self.min_replies = inner, round_offset, min_replies
        self.reference: dict[str, tuple] = {}
        self.names: dict[int, str] = {}  # node id -> client name, learnt from replies
        self.rounds: dict[int, dict] = {}

    def summary(self) -> None:
        self.inner.summary()

    def configure_train(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid) -> Iterable[Message]:
        r = server_round + self.offset
        self.reference = {k: tuple(np.asarray(a.numpy()).shape) for k, a in arrays.items()}
        config["round"] = r
        messages = list(self.inner.configure_train(r, arrays, config, grid))
        size = nbytes(arrays)
        self.rounds[r] = {"round": r, "sampled": len(messages), "bytes_sent": size * len(messages),
                          "bytes_per_update": size, "left_out": [], "clients": []}
        self.waiting = {m.metadata.dst_node_id for m in messages}
        return messages

    def aggregate_train(self, server_round: int, replies: Iterable[Message]) -> tuple[ArrayRecord | None, MetricRecord | None]:
        r = server_round + self.offset
        rec = self.rounds.setdefault(r, {"round": r, "left_out": [], "clients": []})
        good, received = [], 0
        replies = list(replies)
        for msg in replies:
            node = msg.metadata.src_node_id
            if msg.has_error():
                found = _NAMED.findall(msg.error.reason)
                name, why = found[-1] if found else (self.names.get(node, f"node {node}"), _short(msg.error.reason))
                rec["left_out"].append({"client": name, "reason": why.rstrip("'>").strip()[:300]})
                continue
            metrics = next(iter(msg.content.metric_records.values()), {})
            tag = msg.content.config_records.get("client")
            name = str(tag["name"]) if tag and "name" in tag else self.names.get(node, f"node {node}")
            arrays = next(iter(msg.content.array_records.values()), None)
            received += nbytes(arrays) if arrays is not None else 0
            why = check_update(arrays, self.reference)
            if why:
                rec["left_out"].append({"client": name, "reason": why})
                continue
            self.names[node] = name
            rec["clients"].append({"client": name, **{k: float(v) for k, v in metrics.items()
                                                      if isinstance(v, (int, float))}})
            good.append(msg)
        replied = {msg.metadata.src_node_id for msg in replies}
        for node in sorted(getattr(self, "waiting", set()) - replied):  # crashed or too slow: no reply at all
            rec["left_out"].append({"client": self.names.get(node, f"node {node}"),
                                    "reason": "no reply before federated.round_timeout_s"})
        rec["bytes_received"] = received
        if len(good) < self.min_replies:
            rec["skipped"] = f"{len(good)} usable update(s), fewer than federated.min_clients"
            return None, None
        return self.inner.aggregate_train(r, good)

    def configure_evaluate(self, server_round, arrays, config, grid):
        return []  # the clients validate locally during training; the server evaluates the global model

    def aggregate_evaluate(self, server_round, replies):
        return None


def _short(reason: str) -> str:
    m = re.search(r":<'(.*)'>$", reason, re.S)
    text = (m.group(1) if m else reason).strip().splitlines()
    return text[-1][:300] if text else reason[:300]


def check_clients(fed: FederatedConfig) -> None:
    if fed.dp is not None and fed.strategy == "fedadam" and fed.dp.clipping == "fixed":
        raise TunelabError("federated.dp with fixed clipping averages plain updates: use strategy fedavg or fedprox")
