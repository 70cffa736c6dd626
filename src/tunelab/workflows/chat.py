"""`tunelab chat`: an interactive terminal chat with a base model or a trained run. Replies stream
token by token; the history is trimmed (oldest turns first) to fit the context window; Ctrl-D or
Ctrl-C ends the session cleanly."""

from __future__ import annotations

import threading
from pathlib import Path

from transformers import TextIteratorStreamer

from tunelab.config.schema import GenerateConfig
from tunelab.console import console, status
from tunelab.errors import TunelabError
from tunelab.session import Predictor
from tunelab.tasks.prompts import Renderer


def load_chat_model(target: str) -> tuple[Predictor, GenerateConfig]:
    """The predictor of a generative run folder or of a model name / folder, and its decoding settings."""
    with status(f"Loading {target}"):
        if (Path(target) / "config.yaml").is_file():
            predictor = Predictor.from_run(target)
            if predictor.kind != "generation":
                raise TunelabError(f"run '{target}' is a {predictor.kind} run; use `tunelab predict {target} \"text\"`")
            return predictor, predictor.cfg.generate
        predictor = Predictor.from_model_folder(target)
    if predictor.kind != "generation":
        raise TunelabError(f"'{target}' is a {predictor.kind} model; chat needs a text generator")
    return predictor, GenerateConfig(max_new_tokens=256, do_sample=True, temperature=0.7, top_p=0.9)


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
    predictor, gen = load_chat_model(target)
    if max_new_tokens:
        gen = gen.model_copy(update={"max_new_tokens": max_new_tokens})
    tok = predictor.tokenizer
    renderer = Renderer(tok, predictor.seq2seq)
    window = min(context, predictor.context)
    history: list[dict] = []
    if system or predictor.system_prompt:
        history.append({"role": "system", "content": system or predictor.system_prompt})
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
        streamer = TextIteratorStreamer(tok, skip_prompt=not predictor.seq2seq, skip_special_tokens=True)
        worker = threading.Thread(target=predictor.stream, args=(prompt, gen, streamer), daemon=True)
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
