"""Playground: classify texts or chat (streaming, multi-turn, system prompt, sampling settings) with a
finished run, and with a second one side by side (another run, or run A's base model: before vs
after). Models load once into this process (inference only) and stay cached."""

from __future__ import annotations

import threading
from collections import OrderedDict
from pathlib import Path

import gradio as gr
from transformers import TextIteratorStreamer

from tunelab.errors import TunelabError
from tunelab.session import Predictor
from tunelab.tasks.prompts import Renderer
from tunelab.workflows.chat import trim_history

NONE, BASE = "(none)", "(base model of run A)"


class Models:
    """A few loaded predictors (LRU): a model per run or base model, shared by every browser tab."""

    def __init__(self, keep: int = 3):
        self.keep, self.cache, self.lock = keep, OrderedDict(), threading.Lock()

    def get(self, key: str) -> Predictor:
        with self.lock:
            if key in self.cache:
                self.cache.move_to_end(key)
                return self.cache[key]
            p = Predictor.from_run(key) if (Path(key) / "config.yaml").is_file() else Predictor.from_model_folder(key)
            self.cache[key] = p
            while len(self.cache) > self.keep:
                self.cache.popitem(last=False)
            return p


def _base_of(run: str) -> str:
    from tunelab.runs.rundir import RunDir

    return RunDir.open(run).config().model.name


def build(ctx) -> None:
    models = Models()
    with gr.Row():
        a = gr.Dropdown(ctx.finished_choices(), value=None, label="run A", elem_id="pg-a")
        b = gr.Dropdown([NONE, BASE, *[c[1] for c in ctx.finished_choices()]], value=NONE, label="B (side by side)",
                        elem_id="pg-b")
        refresh = gr.Button("Refresh", size="sm", elem_id="pg-refresh")
    note = gr.Markdown(elem_id="pg-note")
    with gr.Tab("Classify"):
        texts = gr.Textbox(label="texts (one per line)", lines=3, elem_id="pg-text")
        go = gr.Button("Classify", variant="primary", elem_id="pg-classify")
        with gr.Row():
            out_a = gr.JSON(label="A", elem_id="pg-out-a")
            out_b = gr.JSON(label="B", elem_id="pg-out-b")
    with gr.Tab("Chat"):
        system = gr.Textbox(label="system prompt", elem_id="pg-system")
        with gr.Row():
            temperature = gr.Slider(0.05, 2.0, value=0.7, label="temperature", elem_id="pg-temperature")
            top_p = gr.Slider(0.05, 1.0, value=0.9, label="top_p", elem_id="pg-top-p")
            max_new = gr.Slider(8, 512, value=64, step=8, label="max new tokens", elem_id="pg-max-new")
            sample = gr.Checkbox(True, label="sample (off: greedy)", elem_id="pg-sample")
        with gr.Row():
            chat_a = gr.Chatbot(label="A", height=320, elem_id="pg-chat-a")
            chat_b = gr.Chatbot(label="B", height=320, elem_id="pg-chat-b")
        msg = gr.Textbox(label="message", elem_id="pg-msg")
        with gr.Row():
            send = gr.Button("Send", variant="primary", elem_id="pg-send")
            clear = gr.Button("Clear", elem_id="pg-clear")

    def choices():
        finished = ctx.finished_choices()
        return gr.update(choices=finished), gr.update(choices=[NONE, BASE, *[c[1] for c in finished]])

    refresh.click(choices, None, [a, b])

    def pair(run_a, run_b):
        if not run_a:
            raise TunelabError("pick run A first (a finished run)")
        keys = [run_a] + ([_base_of(run_a) if run_b == BASE else run_b] if run_b and run_b != NONE else [])
        return [models.get(k) for k in keys]

    def classify(run_a, run_b, text):
        try:
            ps = pair(run_a, run_b)
            lines = [t for t in (text or "").splitlines() if t.strip()]
            if not lines:
                raise TunelabError("type at least one text")
            outs = [p.predict(lines) for p in ps]
        except TunelabError as e:
            return f"**error:** {e}", None, None
        return "", outs[0], outs[1] if len(outs) > 1 else None

    go.click(classify, [a, b, texts], [note, out_a, out_b])

    def reply(p: Predictor, history: list[dict], system_text: str, gen) -> object:
        """Yields the growing reply of `p` to `history` (messages) as a stream."""
        messages = ([{"role": "system", "content": system_text}] if system_text.strip() else []) + history
        renderer = Renderer(p.tokenizer, p.seq2seq)
        messages = trim_history(p.tokenizer, renderer, messages, p.prompt_budget(gen))
        prompt = p.render_chat(messages)
        streamer = TextIteratorStreamer(p.tokenizer, skip_prompt=not p.seq2seq, skip_special_tokens=True)
        worker = threading.Thread(target=p.stream, args=(prompt, gen, streamer), daemon=True)
        worker.start()
        text = ""
        for piece in streamer:
            text += piece
            yield text
        worker.join()

    def chat(run_a, run_b, message, hist_a, hist_b, system_text, temp, top, max_tokens, do_sample):
        try:
            ps = pair(run_a, run_b)
            for p in ps:
                if p.kind != "generation":
                    raise TunelabError(f"'{p.source}' is a {p.kind} model; use the Classify tab")
        except TunelabError as e:
            yield f"**error:** {e}", hist_a, hist_b, message
            return
        if not (message or "").strip():
            yield "type a message", hist_a, hist_b, message
            return
        hists = [list(hist_a or []), list(hist_b or [])]
        for i, p in enumerate(ps):
            gen = p.generation_config(max_new_tokens=int(max_tokens), do_sample=bool(do_sample), temperature=float(temp),
                                      top_p=float(top))
            asked = [*[{"role": m["role"], "content": _text(m["content"])} for m in hists[i]],
                     {"role": "user", "content": message}]
            hists[i] = [*hists[i], {"role": "user", "content": message}, {"role": "assistant", "content": ""}]
            for text in reply(p, asked, system_text or "", gen):
                hists[i][-1] = {"role": "assistant", "content": text}
                yield "", hists[0], hists[1] if len(ps) > 1 else [], ""
        yield "", hists[0], hists[1] if len(ps) > 1 else [], ""

    inputs = [a, b, msg, chat_a, chat_b, system, temperature, top_p, max_new, sample]
    send.click(chat, inputs, [note, chat_a, chat_b, msg])
    msg.submit(chat, inputs, [note, chat_a, chat_b, msg])
    clear.click(lambda: ([], []), None, [chat_a, chat_b])


def _text(content) -> str:
    """A Chatbot message's content as plain text (Gradio may hand back a list of parts)."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(c.get("text", "") if isinstance(c, dict) else str(c) for c in content)
    return str(content)
