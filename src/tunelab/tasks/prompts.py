"""Turning dataset rows into conversations and conversations into model text.

Every generative example is a conversation (a list of {"role", "content"} messages); single-turn
tasks are one user message (an instruction built from the task unit's FLAN-style template) and one
assistant reply.
Rendering then depends on the model:
- decoder-only with a chat template (SmolLM2's ChatML, Llama's): the tokenizer's template;
- decoder-only without one (GPT-2, base models): PLAIN_TEMPLATE below;
- encoder-decoder (T5, BART, BERT2BERT): the history flattened into the source text, the last reply
  is the target.
"""

from __future__ import annotations

# Documented fallback for models without a chat template (GPT-2 and other base models).
PLAIN_USER = "### Instruction:\n{content}\n\n### Response:\n"
PLAIN_ASSISTANT = "{content}{eos}\n\n"
PLAIN_SYSTEM = "{content}\n\n"


def fill_template(template: str, fields: dict) -> str:
    """A task prompt (`task.prompt`, e.g. "summarize: {source}") filled from a row's fields."""
    try:
        return template.format(**fields)
    except KeyError as e:
        from tunelab.errors import TunelabError

        raise TunelabError(f"task.prompt uses {{{e.args[0]}}}, which the data does not have; "
                           f"available fields: {', '.join(sorted(fields))}") from None


def single_turn(instruction: str, target: str, system_prompt: str | None = None) -> list[dict]:
    """A one-exchange conversation (an optional system message first)."""
    messages = [{"role": "user", "content": instruction}, {"role": "assistant", "content": str(target)}]
    return with_system(messages, system_prompt)


def with_system(messages: list[dict], system_prompt: str | None) -> list[dict]:
    return [{"role": "system", "content": system_prompt}, *messages] if system_prompt else messages


def with_shots(shots: list[list[dict]], messages: list[dict]) -> list[dict]:
    """k-shot prompting: earlier (user, assistant) exchanges as turns before the query. A system
    message stays first."""
    system = [m for m in messages[:1] if m["role"] == "system"]
    rest = messages[len(system):]
    turns = [m for shot in shots for m in shot if m["role"] != "system"]
    return [*system, *turns, *rest]


class Renderer:
    """Renders conversations to text for one tokenizer; knows which character spans are replies."""

    def __init__(self, tokenizer, seq2seq: bool):
        self.tok = tokenizer
        self.seq2seq = seq2seq
        self.chat_template = bool(getattr(tokenizer, "chat_template", None)) and not seq2seq

    def render(self, messages: list[dict], add_generation_prompt: bool = False) -> str:
        if self.chat_template:
            return self.tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=add_generation_prompt)
        if self.seq2seq:
            return flatten_history(messages)
        eos = self.tok.eos_token or ""
        parts = []
        for m in messages:
            template = {"system": PLAIN_SYSTEM, "user": PLAIN_USER, "assistant": PLAIN_ASSISTANT}[m["role"]]
            parts.append(template.format(content=m["content"], eos=eos))
        return "".join(parts)

    def segments(self, messages: list[dict]) -> list[tuple[str, bool]]:
        """Split the rendered conversation into (text, is_reply) pieces whose concatenation is the
        full rendering; reply pieces are what the loss is computed on."""
        out, done = [], ""
        for i, m in enumerate(messages):
            if m["role"] != "assistant":
                continue
            prompt = self.render(messages[:i], add_generation_prompt=True)
            full = self.render(messages[: i + 1])
            if not (prompt.startswith(done) and full.startswith(prompt)):
                raise ValueError("the chat template does not render conversations prefix-stably")
            out.append((prompt[len(done):], False))
            out.append((full[len(prompt):], True))
            done = full
        return [(t, r) for t, r in out if t]


def flatten_history(messages: list[dict]) -> str:
    """Encoder-decoder source text: a single user message as is; longer histories as 'role: text' lines."""
    visible = [m for m in messages if m["role"] != "system"]
    if len(visible) == 1:
        return visible[0]["content"]
    return "\n".join(f"{m['role']}: {m['content']}" for m in visible)
