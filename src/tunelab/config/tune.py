"""The `tune:` section (hyper-parameter search and rank selection, tunelab/search/) and the `compare:`
section (`tunelab compare`): part of the one schema, validated like every other section.

    tune:
      space:                                   # any dotted key of the recipe
        train.lr: {log_uniform: [1.0e-5, 1.0e-2]}
        method.r: {choices: [2, 4, 8, 16, 32]}
        train.epochs: {int: [1, 3]}
      n_trials: 12
      pruner: median

On the command line a dimension is `tune.space.train.lr="{log_uniform: [1e-5, 1e-2]}"`; the nested
form that dotted overrides produce is read back into dotted keys.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

KINDS = ("log_uniform", "uniform", "int", "log_int", "choices")


class Dimension(BaseModel):
    """One searched key: exactly one of a float range (log or linear), an int range, or choices."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    log_uniform: tuple[float, float] | None = None
    uniform: tuple[float, float] | None = None
    int_: tuple[int, int] | None = Field(None, alias="int")
    log_int: tuple[int, int] | None = None
    choices: list[Any] | None = None
    step: float | None = Field(None, gt=0, description="uniform/int: grid step")

    @model_validator(mode="after")
    def _one_kind(self) -> Dimension:
        set_ = [k for k in KINDS if getattr(self, "int_" if k == "int" else k) is not None]
        if len(set_) != 1:
            raise ValueError(f"give exactly one of {', '.join(KINDS)} (got {', '.join(set_) or 'none'})")
        kind = set_[0]
        if kind == "choices":
            if not self.choices:
                raise ValueError("choices: the list is empty; give at least one value")
            return self
        low, high = self.bounds
        if low > high:
            raise ValueError(f"{kind}: low {low} > high {high}; write [low, high]")
        if kind.startswith("log") and low <= 0:
            raise ValueError(f"{kind}: bounds must be > 0 for a log scale (got {low})")
        return self

    @property
    def kind(self) -> str:
        return next(k for k in KINDS if getattr(self, "int_" if k == "int" else k) is not None)

    @property
    def bounds(self) -> tuple:
        return getattr(self, "int_" if self.kind == "int" else self.kind)

    def values(self) -> list:
        """The values a check or a grid goes through: the ends of a range, or every choice."""
        if self.kind == "choices":
            return list(self.choices)
        low, high = self.bounds
        if self.step and self.kind in ("uniform", "int"):
            n = int(round((high - low) / self.step))
            return [type(low)(low + i * self.step) for i in range(n + 1)]
        return [low, high]


def flatten_space(value: dict, prefix: str = "") -> dict:
    """{"train": {"lr": {...}}} (what dotted overrides produce) -> {"train.lr": {...}}."""
    out = {}
    for key, dim in (value or {}).items():
        name = f"{prefix}{key}"
        if isinstance(dim, dict) and dim and not (set(dim) & {*KINDS, "step"}):
            out.update(flatten_space(dim, f"{name}."))
        else:
            out[name] = dim
    return out


class TuneConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    strategy: Literal["search", "rank", "layer_rank"] = Field(
        "search", description="search: the space below; rank: double the LoRA rank while validation gains more "
        "than min_gain; layer_rank: per-layer ranks from the spectrum of a short high-rank run")
    space: dict[str, Dimension] = Field(default_factory=dict, description="dotted recipe key -> dimension")
    metric: str | None = Field(None, description="validation metric to optimize; default: the task's own "
                               "(train.metric_for_best); its direction comes from the task")
    objectives: list[Literal["metric", "trainable_params", "train_seconds"]] = Field(
        default_factory=lambda: ["metric"], min_length=1, max_length=2,
        description="one objective, or two for a Pareto front (e.g. [metric, trainable_params])")
    n_trials: int | None = Field(12, ge=1, description="trials in the whole study (all workers together)")
    timeout_minutes: float | None = Field(None, gt=0, description="this worker stops starting trials after this long")
    sampler: Literal["tpe", "random", "grid", "cmaes"] = "tpe"
    seed: int | None = Field(None, description="sampler seed; default: the recipe's seed")
    pruner: Literal["none", "median", "halving", "hyperband"] = "median"
    startup_trials: int = Field(3, ge=0, description="trials run in full before the pruner (and TPE) act")
    warmup_steps: int = Field(0, ge=0, description="no pruning before this training step of a trial")
    heartbeat_seconds: int = Field(20, ge=1, description="a trial whose worker is silent for 3x this is marked failed")
    keep_trial_runs: bool = Field(False, description="keep each trial's checkpoints (default: metrics and config only)")
    isolate_trials: bool = Field(False, description="each trial in its own process: its memory is its own and a "
                                 "crash (segfault, out of memory) fails only that trial; costs a process start")
    # strategy: rank
    rank_key: str = Field("method.r", description="the key the rank strategy doubles")
    rank_start: int = Field(2, ge=1)
    rank_max: int = Field(64, ge=1)
    min_gain: float = Field(0.005, ge=0, description="rank: keep doubling while the metric gains more than this")
    # strategy: layer_rank
    energy: float = Field(0.9, gt=0, le=1, description="layer_rank: share of each update's spectral energy kept")
    probe_rank: int = Field(32, ge=1, description="layer_rank: rank of the short probe run")
    probe_steps: int | None = Field(None, ge=1, description="layer_rank: probe run length (default: one epoch)")
    alpha_per_rank: float | None = Field(2.0, gt=0, description="rank: method.alpha = this x r (keeps the LoRA "
                                         "scale alpha/r fixed); null leaves alpha as the recipe has it")

    @field_validator("space", mode="before")
    @classmethod
    def _flat(cls, value):
        return flatten_space(value) if isinstance(value, dict) else value

    @model_validator(mode="after")
    def _consistent(self) -> TuneConfig:
        if self.strategy == "rank" and self.rank_start > self.rank_max:
            raise ValueError(f"tune.rank_start {self.rank_start} > tune.rank_max {self.rank_max}")
        if len(set(self.objectives)) != len(self.objectives):
            raise ValueError("tune.objectives: the same objective twice")
        if self.sampler == "grid" and any(d.kind in ("log_uniform", "log_int") or (d.kind != "choices" and not d.step)
                                          for d in self.space.values()):
            raise ValueError("tune.sampler=grid needs choices or ranges with a step in every dimension")
        return self


class CompareConfig(BaseModel):
    """`tunelab compare`: the same recipe trained once per method (ignored by `tunelab train`)."""

    model_config = ConfigDict(extra="forbid")

    methods: list[str] = Field(default_factory=lambda: ["full", "head", "lora"])
    method: dict[str, dict] = Field(default_factory=dict, description="each method's config section")
    train: dict[str, dict] = Field(default_factory=dict, description="per-method train overrides")
    time_budget_minutes: float | None = Field(None, gt=0)
    latency_batch: int = Field(32, ge=1)
    latency_repeats: int = Field(7, ge=1)
