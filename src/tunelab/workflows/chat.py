"""`tunelab chat`: an interactive terminal chat with a base model or a trained run. Replies stream
token by token; the history is trimmed (oldest turns first) to fit the context window; Ctrl-D or
Ctrl-C ends the session cleanly."""

from __future__ import annotations

import threading
from pathlib import Path

import torch
from transformers import TextIteratorStreamer

from tunelab.config.schema import GenerateConfig, ModelConfig
from tunelab.console import console, status
from tunelab.errors import TunelabError
from tunelab.tasks.generation import generation_kwargs
from tunelab.tasks.prompts import Renderer


def load_chat_model(target: str):
    """(tokenizer, model, seq2seq, default GenerateConfig, system prompt) for a run folder or a model name."""
    from tunelab.methods import get_method
    from tunelab.runs.rundir import RunDir
    from tunelab.tasks import get_task

    if (Path(target) / "config.yaml").is_file():
        run = RunDir.open(target)
        cfg = run.config()
        if cfg.task.type == "classification":
            raise TunelabError(f"run '{target}' is a classification run; use `tunelab predict {target} \"text\"`")
        if not (run.adapter_dir / "adapter_config.json").is_file() and not (run.adapter_dir / "tunelab_method.json").is_file():
            raise TunelabError(f"run '{target}' has no saved adapter yet; resume it with `tunelab train --resume {target}`")
        task = get_task(cfg.task.type)
        method = get_method(cfg.method.name)(cfg.method)
        with status(f"Loading {cfg.model.name} + adapter"):
            tok, base = task.load(cfg.model, **method.model_load_kwargs())
            model = method.load(base, run.adapter_dir)
        return tok, model.eval(), task.seq2seq, cfg.generate, cfg.task.system_prompt
    task = get_task("chat")
    with status(f"Loading {target}"):
        tok, model = task.load(ModelConfig(name=target))
    return tok, model.eval(), task.seq2seq, GenerateConfig(max_new_tokens=256, do_sample=True, temperature=0.7, top_p=0.9), None


def trim_history(tok, renderer: Renderer, history: list[dict], budget: int) -> list[dict]:
    """Drop the oldest user/assistant exchanges (never the system message or the last turn) until the
    rendered prompt fits `budget` tokens."""
    system = [m for m in history[:1] if m["role"] == "system"]
    turns = history[len(system):]
    while len(turns) > 1:
        prompt = renderer.render([*system, *turns], add_generation_prompt=True)
        if len(tok(prompt, add_special_tokens=False)["input_ids"]) <= budget:
            break
        turns = turns[2:] if len(turns) > 2 else turns[1:]
    return [*system, *turns]


def chat(target: str, system: str | None = None, max_new_tokens: int | None = None, context: int = 2048) -> None:
    tok, model, seq2seq, gen, run_system = load_chat_model(target)
    if max_new_tokens:
        gen = gen.model_copy(update={"max_new_tokens": max_new_tokens})
    renderer = Renderer(tok, seq2seq)
    window = min(context, getattr(model.config, "max_position_embeddings", context) or context)
    history: list[dict] = []
    if system or run_system:
        history.append({"role": "system", "content": system or run_system})
    console.print(f"[dim]Chatting with {target}. Ctrl-D or Ctrl-C to quit.[/]")
    while True:
        try:
            text = console.input("[bold green]you>[/] ")
        except (EOFError, KeyboardInterrupt):
            console.print("\n[dim]bye[/]")
            return
        if not text.strip():
            continue
        history.append({"role": "user", "content": text})
        history = trim_history(tok, renderer, history, window - gen.max_new_tokens)
        prompt = renderer.render(history, add_generation_prompt=True)
        inputs = tok(prompt, return_tensors="pt", add_special_tokens=seq2seq, return_token_type_ids=False)
        streamer = TextIteratorStreamer(tok, skip_prompt=not seq2seq, skip_special_tokens=True)
        kwargs = {**inputs, **generation_kwargs(tok, gen), "streamer": streamer}
        worker = threading.Thread(target=_generate, args=(model, kwargs), daemon=True)
        worker.start()
        console.print("[bold blue]bot>[/] ", end="")
        reply = []
        try:
            for piece in streamer:
                reply.append(piece)
                console.print(piece, end="", markup=False, highlight=False, soft_wrap=True)
        except KeyboardInterrupt:
            console.print("\n[dim]bye[/]")
            return
        worker.join()
        console.print()
        history.append({"role": "assistant", "content": "".join(reply).strip()})


@torch.no_grad()
def _generate(model, kwargs) -> None:
    model.generate(**kwargs)
