"""The HTTP API (FastAPI): tunelab's own /v1/classify and /v1/generate, the OpenAI-compatible
/v1/chat/completions, /v1/completions and /v1/models (streaming over server-sent events), admin
endpoints that add and remove adapters at run time, /health and Prometheus /metrics.

Model work never runs on the event loop: requests go through the dynamic batcher to one model thread,
so the server keeps answering (health, metrics, streams) while a batch computes."""

from __future__ import annotations

import asyncio
import json
import secrets
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from dataclasses import dataclass

from fastapi import Depends, FastAPI, Path, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response, StreamingResponse
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from tunelab.serve import engine
from tunelab.serve.batching import DynamicBatcher
from tunelab.serve.metrics import Metrics
from tunelab.serve.registry import Registry, Served
from tunelab.serve.schemas import (MAX_TOKENS, NAME_PATTERN, AdapterRequest, ApiError, ChatRequest, ClassifyRequest,
                                   ClassifyResponse, CompletionRequest, GenerateRequest, GenerateResponse, ModelCard,
                                   ModelList, SamplingParams)


@dataclass
class Settings:
    api_key: str | None = None
    batch_window_ms: float = 5.0
    max_batch: int = 32  # texts per classification call, prompts per generation call; 1 = no batching
    max_tokens: int = MAX_TOKENS  # this server's cap on a request's max_tokens


def create_app(registry: Registry, settings: Settings) -> FastAPI:
    executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="model")
    metrics = Metrics()

    def run_batch(key, items):
        kind, name, *rest = key
        entry = registry.get(name)
        if kind == "classify":
            return engine.classify(entry, items)
        return engine.generate(entry, items, rest[0])

    batcher = DynamicBatcher(run_batch, executor, window_ms=settings.batch_window_ms, max_items=settings.max_batch,
                             on_batch=lambda key, n: metrics.batch_size.labels(key[0]).observe(n))

    @asynccontextmanager
    async def lifespan(app):
        yield
        executor.shutdown(wait=False, cancel_futures=True)

    app = FastAPI(title="tunelab serve", version="1", lifespan=lifespan,
                  description="Serve fine-tuned tunelab runs and exported models; OpenAI-compatible where it applies.")
    bearer = HTTPBearer(auto_error=False, description="the server's --api-key")

    def authorize(creds: HTTPAuthorizationCredentials | None = Depends(bearer)) -> None:
        if settings.api_key is None:
            return
        if creds is None or not secrets.compare_digest(creds.credentials.encode(), settings.api_key.encode()):
            raise ApiError(401, "missing or wrong API key: send the header 'Authorization: Bearer KEY'", "authentication_error")

    auth = [Depends(authorize)]

    def authorize_admin(_: None = Depends(authorize)) -> None:
        # Adding an adapter loads a folder from the server's disk: never allow that to anonymous callers.
        if settings.api_key is None:
            raise ApiError(403, "admin endpoints are disabled: start `tunelab serve` with --api-key to use them",
                           "permission_error")

    admin_auth = [Depends(authorize_admin)]

    @app.exception_handler(ApiError)
    async def api_error(request: Request, e: ApiError):
        headers = {"WWW-Authenticate": "Bearer"} if e.status == 401 else None
        return JSONResponse({"error": {"message": e.message, "type": e.type, "code": e.status}}, e.status, headers=headers)

    @app.exception_handler(RequestValidationError)
    async def invalid_request(request: Request, e: RequestValidationError):
        problems = [f"{'.'.join(str(p) for p in err['loc'][1:]) or 'body'}: {err['msg']}" for err in e.errors()[:5]]
        return JSONResponse({"error": {"message": "; ".join(problems), "type": "invalid_request_error", "code": 422}}, 422)

    @app.middleware("http")
    async def count_requests(request: Request, call_next):
        start = time.perf_counter()
        response = await call_next(request)
        route = request.scope.get("route")
        endpoint = getattr(route, "path", "unmatched")
        metrics.requests.labels(endpoint, str(response.status_code)).inc()
        metrics.latency.labels(endpoint).observe(time.perf_counter() - start)
        return response

    async def on_model_thread(fn, *args):
        return await asyncio.get_running_loop().run_in_executor(executor, fn, *args)

    # -- service endpoints ----------------------------------------------------------------------
    @app.get("/health")
    async def health() -> dict:
        return {"status": "ok", "models": sorted(registry.served)}

    @app.get("/metrics", response_class=Response, responses={200: {"content": {"text/plain": {}}}})
    async def prometheus() -> Response:
        return Response(metrics.render(), media_type="text/plain; version=0.0.4; charset=utf-8")

    @app.get("/v1/models", dependencies=auth)
    async def list_models() -> ModelList:
        return ModelList(data=[card(e) for e in registry.served.values()])

    # -- tunelab endpoints ----------------------------------------------------------------------
    @app.post("/v1/classify", dependencies=auth)
    async def classify(req: ClassifyRequest) -> ClassifyResponse:
        req.check()
        registry.get(req.model, "classification")
        preds = await batcher.submit(("classify", req.model), req.texts, size=len(req.texts))
        return ClassifyResponse(model=req.model, predictions=preds)

    @app.post("/v1/generate", dependencies=auth)
    async def generate(req: GenerateRequest) -> GenerateResponse:
        """Each input fills the run's task prompt (as `tunelab predict` does) and gets one output."""
        req.check()
        entry = registry.get(req.model, "generation")
        prompts = await on_model_thread(entry.predictor.task_prompts, req.inputs)  # tokenizers: model thread only
        outs = await generate_all(entry, prompts, sampling(entry, req, settings.max_tokens))
        return GenerateResponse(model=req.model, outputs=[o.text for o in outs])

    async def generate_all(entry: Served, prompts: list[str], params: engine.Sampling) -> list[engine.Generated]:
        key = ("generate", entry.name, params)
        outs = await asyncio.gather(*(batcher.submit(key, p) for p in prompts))
        metrics.tokens.labels(entry.name).inc(sum(o.completion_tokens for o in outs))
        return outs

    # -- OpenAI-compatible endpoints ------------------------------------------------------------
    @app.post("/v1/chat/completions", dependencies=auth)
    async def chat_completions(req: ChatRequest):
        entry = registry.get(req.model, "generation")
        prompt = entry.predictor.render_chat([m.model_dump() for m in req.messages])
        params = sampling(entry, req, settings.max_tokens, req.max_completion_tokens)
        rid, created = f"chatcmpl-{uuid.uuid4().hex}", int(time.time())
        head = {"id": rid, "created": created, "model": req.model}
        if req.stream:
            def chunk(delta: dict, reason: str | None) -> dict:
                return {**head, "object": "chat.completion.chunk",
                        "choices": [{"index": 0, "delta": delta, "finish_reason": reason}]}

            async def events():
                yield sse(chunk({"role": "assistant", "content": ""}, None))
                async for piece, reason in stream(entry, prompt, params):
                    yield sse(chunk({"content": piece} if piece else {}, reason))
                yield "data: [DONE]\n\n"

            return StreamingResponse(events(), media_type="text/event-stream")
        (out,) = await generate_all(entry, [prompt], params)
        return {**head, "object": "chat.completion",
                "choices": [{"index": 0, "message": {"role": "assistant", "content": out.text}, "finish_reason": out.finish_reason}],
                "usage": usage([out])}

    @app.post("/v1/completions", dependencies=auth)
    async def completions(req: CompletionRequest):
        entry = registry.get(req.model, "generation")
        prompts = req.prompts()
        params = sampling(entry, req, settings.max_tokens)
        head = {"id": f"cmpl-{uuid.uuid4().hex}", "object": "text_completion", "created": int(time.time()), "model": req.model}
        if req.stream:
            if len(prompts) > 1:
                raise ApiError(422, "prompt: streaming takes a single prompt")

            async def events():
                async for piece, reason in stream(entry, prompts[0], params):
                    yield sse({**head, "choices": [{"index": 0, "text": piece, "finish_reason": reason, "logprobs": None}]})
                yield "data: [DONE]\n\n"

            return StreamingResponse(events(), media_type="text/event-stream")
        outs = await generate_all(entry, prompts, params)
        return {**head, "choices": [{"index": i, "text": o.text, "finish_reason": o.finish_reason, "logprobs": None}
                                    for i, o in enumerate(outs)], "usage": usage(outs)}

    async def stream(entry: Served, prompt: str, params: engine.Sampling):
        """(text piece, None) as tokens come, then ("", finish_reason). Streams are not batched."""
        from transformers import AsyncTextIteratorStreamer

        streamer = AsyncTextIteratorStreamer(entry.predictor.tokenizer, skip_prompt=not entry.predictor.seq2seq,
                                             skip_special_tokens=True)
        cancel = threading.Event()
        job = asyncio.get_running_loop().run_in_executor(executor, engine.generate_streaming, entry, prompt, params, streamer, cancel)
        text, cut = "", None
        try:
            async for piece in streamer:
                cut = engine.cut_at_stop(text + piece, params.stop)
                if cut is not None:
                    cancel.set()
                    if cut[len(text):]:
                        yield cut[len(text):], None
                    text = cut
                    break
                text += piece
                if piece:
                    yield piece, None
            await job
            done = await on_model_thread(engine.finish, entry, prompt, text, params)
            metrics.tokens.labels(entry.name).inc(done.completion_tokens)
            yield "", "stop" if cut is not None else done.finish_reason
        finally:
            cancel.set()  # the client went away (or we are done): stop generating

    # -- admin ----------------------------------------------------------------------------------
    @app.post("/admin/adapters", dependencies=admin_auth, status_code=201)
    async def add_adapter(req: AdapterRequest) -> ModelCard:
        """Load a run folder (its adapter joins a base already in memory when it can) or a model folder."""
        return card(await on_model_thread(registry.add, req.name, req.path))

    @app.delete("/admin/adapters/{name}", dependencies=admin_auth)
    async def remove_adapter(name: str = Path(pattern=NAME_PATTERN, max_length=64)) -> dict:
        registry.get(name)
        await on_model_thread(registry.remove, name)
        return {"removed": name, "models": sorted(registry.served)}

    return app


def sampling(entry: Served, req: SamplingParams, cap: int, max_tokens: int | None = None) -> engine.Sampling:
    """The request's settings over the run's `generate` defaults. temperature 0 means greedy."""
    gen = entry.predictor.cfg.generate
    asked = req.max_tokens or max_tokens
    if asked and asked > cap:
        raise ApiError(422, f"max_tokens: {asked} is over this server's limit of {cap}")
    new = min(asked or gen.max_new_tokens, cap, max(1, entry.predictor.context - 8))  # never past the model's positions
    stop = tuple([req.stop] if isinstance(req.stop, str) else req.stop or ())
    if req.temperature == 0 or (req.temperature is None and not gen.do_sample):
        return engine.Sampling(new, False, None, None, stop)
    return engine.Sampling(new, True, req.temperature or gen.temperature, req.top_p or gen.top_p, stop)


def card(entry: Served) -> ModelCard:
    return ModelCard(id=entry.name, created=entry.created, task=entry.task, base=entry.predictor.cfg.model.name, source=entry.source)


def usage(outs: list[engine.Generated]) -> dict:
    prompt, completion = sum(o.prompt_tokens for o in outs), sum(o.completion_tokens for o in outs)
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}


def sse(obj: dict) -> str:
    return f"data: {json.dumps(obj, ensure_ascii=False)}\n\n"
