"""The inference layer: a trained run (base + adapter) or a plain model folder, ready to classify,
generate, stream, render chats and count tokens. `tunelab eval / predict / chat / serve`, export's
checks and compare's latency all go through it. It prints nothing (no progress bars unless asked
for with `desc`), so a served request never touches the console.

    p = Predictor.from_run("runs/sentiment-lora-...")
    p.predict(["what a launch"])        # [{"text": ..., "label": "positive", "score": 0.93, "scores": {...}}]
    p = Predictor.from_model_folder("runs/.../export-fp32")   # or a packaged model name
    p.generate(p.task_prompts(["What is a building permit?"]))
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from tunelab.config import load_config
from tunelab.config.schema import GenerateConfig, RunConfig
from tunelab.errors import TunelabError
from tunelab.methods import get_method
from tunelab.runs.rundir import RunDir
from tunelab.runtime import autocast, resolve_precision, setup_threads
from tunelab.tasks import make_task
from tunelab.tasks.generation import generation_kwargs
from tunelab.tasks.prompts import Renderer

POSITION_KEYS = ("max_position_embeddings", "n_positions", "max_seq_len", "seq_length", "n_ctx")


def context_length(config, default: int) -> int:
    """The longest input the model's own config allows (an encoder-decoder's: its encoder's)."""
    for cfg in (config, getattr(config, "encoder", None)):
        for key in POSITION_KEYS:
            value = getattr(cfg, key, None) if cfg is not None else None
            if isinstance(value, int) and value > 0:
                return value
    return default


class Predictor:
    def __init__(self, cfg: RunConfig, task, tokenizer, model, method=None, run: RunDir | None = None,
                 source: str | None = None):
        self.cfg, self.task, self.tokenizer, self.model, self.method, self.run = cfg, task, tokenizer, model, method, run
        self.source = source or (str(run.path) if run else cfg.model.name)
        self.precision = resolve_precision(cfg.train.precision, next(model.parameters()).device)
        task.tok, task.precision = tokenizer, self.precision
        self.context = context_length(model.config, cfg.model.max_length)

    # -- loading -----------------------------------------------------------------------------------
    @classmethod
    def from_run(cls, path: str | Path) -> Predictor:
        """A finished (or at least saved) run: its base model + adapter, on the CPU."""
        run = RunDir.open(path)
        adapter = run.adapter_dir
        if not (adapter / "adapter_config.json").is_file() and not (adapter / "tunelab_method.json").is_file():
            raise TunelabError(f"run '{path}' has no saved adapter yet (training did not finish); "
                               f"resume it with `tunelab train --resume {path}`")
        cfg = run.config()
        setup_threads(cfg.train.threads)
        task = make_task(cfg)
        labels_file = adapter / "labels.json"
        task.labels = json.loads(labels_file.read_text(encoding="utf-8")) if labels_file.is_file() else []
        method = get_method(cfg.method.name)(cfg.method)
        tok, base = task.load_model(**method.model_load_kwargs("cpu"))
        model = method.load(base, adapter).eval()
        return cls(cfg, task, tok, model, method, run)

    @classmethod
    def from_model_folder(cls, path: str | Path) -> Predictor:
        """A plain transformers model (a merged export, any HF folder, a packaged model name): a
        sequence classifier if its config says so (labels from id2label), otherwise a text generator.
        Its context length comes from its own config."""
        folder = Path(path)
        config = {}
        if (folder / "config.json").is_file():
            config = json.loads((folder / "config.json").read_text(encoding="utf-8"))
        classifier = any(a.endswith("ForSequenceClassification") for a in config.get("architectures") or [])
        overrides = [f"model.name={path}", f"task.type={'classification' if classifier else 'chat'}"]
        cfg = load_config(None, overrides)
        task = make_task(cfg)
        if classifier:
            task.labels = [v for _, v in sorted((int(k), v) for k, v in (config.get("id2label") or {}).items())]
        tok, model = task.load_model()
        length = min(context_length(model.config, cfg.model.max_length), 32768)
        cfg = load_config(None, [*overrides, f"model.max_length={length}"])
        task.cfg = cfg
        return cls(cfg, task, tok, model.eval(), source=str(path))

    def sharing(self, path: str | Path) -> Predictor:
        """Another run whose peft adapter has been loaded into this predictor's model (a served base
        shared by several adapters): its own config, task and labels, the same model."""
        run = RunDir.open(path)
        cfg = run.config()
        task = make_task(cfg)
        labels_file = run.adapter_dir / "labels.json"
        task.labels = json.loads(labels_file.read_text(encoding="utf-8")) if labels_file.is_file() else []
        task.seq2seq, task.new_modules = self.task.seq2seq, self.task.new_modules
        return Predictor(cfg, task, self.tokenizer, self.model, get_method(cfg.method.name)(cfg.method), run)

    # -- what it is ------------------------------------------------------------------------------------
    @property
    def kind(self) -> str:
        """"classification" or "generation"."""
        return self.task.kind

    @property
    def labels(self) -> list[str]:
        return self.task.labels

    @property
    def seq2seq(self) -> bool:
        return self.task.seq2seq

    @property
    def system_prompt(self) -> str | None:
        return getattr(self.cfg.task, "system_prompt", None)

    # -- classification ------------------------------------------------------------------------------
    def classify(self, texts: list[str], desc: str | None = None) -> list[dict]:
        """{"label", "score", "scores"} for each text."""
        self._need("classification")
        return self.task.classify(self.model, texts, desc=desc)

    # -- generation ----------------------------------------------------------------------------------
    def task_prompts(self, texts: list[str]) -> list[str]:
        """Each text filled into the run's task prompt (and system prompt), rendered for the model."""
        self._need("generation")
        return self.task.prompts_for(texts)

    def render_chat(self, messages: list[dict], add_generation_prompt: bool = True) -> str:
        """Messages as model text (chat template, plain template, or an encoder-decoder's source); the
        run's system prompt goes first when the messages have none."""
        if self.system_prompt and (not messages or messages[0]["role"] != "system"):
            messages = [{"role": "system", "content": self.system_prompt}, *messages]
        return Renderer(self.tokenizer, self.seq2seq).render(messages, add_generation_prompt=add_generation_prompt)

    def generation_config(self, **update) -> GenerateConfig:
        return self.cfg.generate.model_copy(update=update) if update else self.cfg.generate

    def prompt_budget(self, gen: GenerateConfig) -> int:
        """Prompt tokens that fit beside the reply in the model's context (the prompt's left end is cut)."""
        return self.context if self.seq2seq else max(8, self.context - gen.max_new_tokens)

    def generate(self, prompts: list[str], gen: GenerateConfig | None = None, desc: str | None = None) -> list[str]:
        self._need("generation")
        return self.task.generate(self.model, prompts, gen or self.cfg.generate, desc=desc, max_length=self.context)

    def prompt_ids(self, prompt: str, gen: GenerateConfig) -> list[int]:
        """The prompt's token ids as they reach the model (cut from the left to the budget)."""
        return self.tokenizer(prompt, add_special_tokens=self.seq2seq)["input_ids"][-self.prompt_budget(gen):]

    def count_tokens(self, text: str) -> int:
        return len(self.tokenizer(text, add_special_tokens=False)["input_ids"]) if text else 0

    @torch.no_grad()
    def stream(self, prompt: str, gen: GenerateConfig, streamer, stopping_criteria=None) -> None:
        """One generation whose pieces go to `streamer` (a transformers TextStreamer)."""
        self._need("generation")
        ids = self.prompt_ids(prompt, gen)
        device = next(self.model.parameters()).device
        enc = {"input_ids": torch.tensor([ids], device=device),
               "attention_mask": torch.ones(1, len(ids), dtype=torch.long, device=device)}
        with autocast(self.precision, device):
            self.model.generate(**enc, **generation_kwargs(self.tokenizer, gen), streamer=streamer,
                                stopping_criteria=stopping_criteria)

    # -- either ------------------------------------------------------------------------------------------
    def predict(self, texts: list[str], desc: str | None = None) -> list[dict]:
        """Classification: {"text", "label", "score", "scores"}; generation: {"text", "output"} from the
        task prompt."""
        if self.kind == "classification":
            return [{"text": t, **p} for t, p in zip(texts, self.classify(texts, desc))]
        return [{"text": t, "output": o} for t, o in zip(texts, self.generate(self.task_prompts(texts), desc=desc))]

    def _need(self, kind: str) -> None:
        if self.kind != kind:
            raise TunelabError(f"'{self.source}' is a {self.kind} model, not a {kind} model")
