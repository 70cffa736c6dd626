"""Request and response bodies. The OpenAI-compatible ones follow the OpenAI API field names so the
official client works unchanged; the limits live here so /openapi.json documents them and every
violation becomes a 422 whose message names the field."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field

# Request limits (a CPU server: keep single requests bounded so one client cannot starve the rest).
MAX_TEXT_CHARS = 20_000
MAX_BATCH_TEXTS = 64
MAX_TOKENS = 1024
MAX_MESSAGES = 64
NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$"  # adapter/model names: no '/', cannot start with '.'



class ApiError(Exception):
    """An error the client caused (or can act on): sent as {"error": {"message", "type", "code"}},
    the OpenAI error shape, with this HTTP status."""

    def __init__(self, status: int, message: str, type: str = "invalid_request_error"):
        super().__init__(message)
        self.status, self.message, self.type = status, message, type


class ClassifyRequest(BaseModel):
    model: str = Field(max_length=200, description="served model name (see /v1/models)")
    texts: list[str] = Field(min_length=1, max_length=MAX_BATCH_TEXTS)

    def check(self) -> None:
        _check_texts(self.texts, "texts")


class Prediction(BaseModel):
    label: str
    score: float
    scores: dict[str, float]


class ClassifyResponse(BaseModel):
    model: str
    predictions: list[Prediction]


class SamplingParams(BaseModel):
    max_tokens: int | None = Field(default=None, ge=1, le=MAX_TOKENS)
    temperature: float | None = Field(default=None, ge=0, le=2, description="0: greedy; unset: the run's default")
    top_p: float | None = Field(default=None, gt=0, le=1)
    stop: str | list[str] | None = Field(default=None, description="cut the output at the first of these strings")


class GenerateRequest(SamplingParams):
    model: str = Field(max_length=200)
    inputs: list[str] = Field(min_length=1, max_length=MAX_BATCH_TEXTS,
                              description="texts filled into the run's task prompt (source / question / user turn)")

    def check(self) -> None:
        _check_texts(self.inputs, "inputs")


class GenerateResponse(BaseModel):
    model: str
    outputs: list[str]


class Message(BaseModel):
    role: Literal["system", "user", "assistant"]
    content: str = Field(max_length=MAX_TEXT_CHARS)


class ChatRequest(SamplingParams):
    model: str = Field(max_length=200)
    messages: list[Message] = Field(min_length=1, max_length=MAX_MESSAGES)
    stream: bool = False
    n: int = Field(default=1, ge=1, le=1, description="only 1 is supported")
    max_completion_tokens: int | None = Field(default=None, ge=1, le=MAX_TOKENS)


class CompletionRequest(SamplingParams):
    model: str = Field(max_length=200)
    prompt: str | list[str] = Field(description=f"one prompt or up to {MAX_BATCH_TEXTS}")
    stream: bool = False
    n: int = Field(default=1, ge=1, le=1, description="only 1 is supported")

    def prompts(self) -> list[str]:
        prompts = [self.prompt] if isinstance(self.prompt, str) else self.prompt
        if not 1 <= len(prompts) <= MAX_BATCH_TEXTS:
            raise ApiError(422, f"prompt: give 1 to {MAX_BATCH_TEXTS} prompts, not {len(prompts)}")
        _check_texts(prompts, "prompt")
        return prompts


class Usage(BaseModel):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


class AdapterRequest(BaseModel):
    name: str = Field(pattern=NAME_PATTERN, description="name clients pass as `model`")
    path: str = Field(max_length=4096, description="run folder or HF model folder on the server")


class ModelCard(BaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str = "tunelab"
    task: str
    base: str
    source: str


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelCard]


def _check_texts(texts: list[str], field: str) -> None:
    for i, t in enumerate(texts):
        if len(t) > MAX_TEXT_CHARS:
            raise ApiError(422, f"{field}[{i}] has {len(t)} characters; the limit is {MAX_TEXT_CHARS}")
