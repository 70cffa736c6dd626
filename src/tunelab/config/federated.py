"""The `federated:` section (`tunelab federate`, tunelab/federated/): part of the one schema, ignored by
`tunelab train`.

    federated:
      clients: 5                     # simulated clients (deployment: the supernodes that connect)
      rounds: 10
      fraction: 1.0                  # share of the clients that train in a round
      min_clients: 2                 # a round needs at least this many (and this many replies)
      local_epochs: 1                # or local_steps
      strategy: fedavg               # fedavg (w_k = n_k / sum n) | fedprox (proximal_mu) | fedadam
      partition: {kind: dirichlet, alpha: 0.3}   # iid | dirichlet | quantity
      dp: {noise: 0.5, clip: 1.0}    # optional: central differential privacy (Flower's wrappers)
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator


class PartitionConfig(BaseModel):
    """How the training data is cut across clients (each client also gets its share of validation)."""

    model_config = ConfigDict(extra="forbid")

    kind: Literal["iid", "dirichlet", "quantity"] = Field(
        "iid", description="iid: shuffled equal shares; dirichlet: label skew, each label's examples spread over "
        "clients by Dirichlet(alpha); quantity: client sizes drawn by Dirichlet(alpha), labels mixed")
    alpha: float = Field(0.5, gt=0, description="dirichlet/quantity: concentration (small: more skew)")
    min_examples: int = Field(8, ge=1, description="every client gets at least this many training examples")
    seed: int = Field(1234, description="partition seed, fixed apart from the training seed")


class PrivacyConfig(BaseModel):
    """Central differential privacy from Flower's server-side strategy wrappers: each client's update is
    clipped to `clip` (L2 norm) and Gaussian noise of std noise x clip / sampled clients is added to
    the average. (Flower's client-side variants need its clipping mod on every client: not offered.)"""

    model_config = ConfigDict(extra="forbid")

    noise: float = Field(..., ge=0, description="noise multiplier (std of the noise / clipping norm)")
    clip: float = Field(1.0, gt=0, description="L2 clipping norm of each client's update (fixed clipping) or "
                        "its starting value (adaptive)")
    clipping: Literal["fixed", "adaptive"] = "fixed"
    delta: float | None = Field(None, gt=0, lt=1, description="delta of the (epsilon, delta) figure; default 1/n")


class FederatedConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    clients: int = Field(5, ge=1, le=1000, description="number of clients (partitions)")
    rounds: int = Field(10, ge=1, description="federated rounds")
    fraction: float = Field(1.0, gt=0, le=1, description="share of the clients sampled to train each round")
    min_clients: int = Field(2, ge=1, description="clients needed to start a round and to aggregate it")
    local_epochs: float = Field(1, gt=0, description="each client's training per round, in epochs of its partition")
    local_steps: int | None = Field(None, ge=1, description="instead of local_epochs: optimizer steps per round")
    strategy: Literal["fedavg", "fedprox", "fedadam"] = Field(
        "fedavg", description="fedavg: weighted mean with w_k = n_k / sum n; fedprox: fedavg + a proximal term "
        "mu/2 ||w - w_global||^2 in each client's loss; fedadam: Adam on the server over the averaged update")
    proximal_mu: float = Field(0.1, ge=0, description="fedprox: weight of the proximal term")
    server_lr: float = Field(0.01, gt=0, description="fedadam: server learning rate (eta)")
    server_tau: float = Field(1e-3, gt=0, description="fedadam: adaptivity (tau)")
    partition: PartitionConfig = PartitionConfig()
    dp: PrivacyConfig | None = Field(None, description="differential privacy (none by default)")
    client_threads: int = Field(1, ge=1, description="simulation: torch threads per client (clients run side by side)")
    parallel_clients: int | None = Field(None, ge=1, description="simulation: clients training at once; default: "
                                         "cores // client_threads")
    round_timeout_s: float = Field(3600, gt=0, description="a client that has not replied after this long is left out")
    baselines: bool = Field(True, description="also train centralized and local-only runs at the same budget")

    @model_validator(mode="after")
    def _consistent(self) -> FederatedConfig:
        if self.min_clients > self.clients:
            raise ValueError(f"federated.min_clients {self.min_clients} > federated.clients {self.clients}")
        return self
