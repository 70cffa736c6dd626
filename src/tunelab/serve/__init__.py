"""`tunelab serve`: an HTTP server for finished runs and exported models (see app.py for the API)."""

from __future__ import annotations

from tunelab.console import console
from tunelab.errors import TunelabError


def serve(targets: list[str], host: str = "127.0.0.1", port: int = 8000, api_key: str | None = None,
          backend: str = "torch", batch_window_ms: float = 5.0, max_batch: int = 32, max_tokens: int = 1024,
          access_log: bool = False) -> None:
    if backend == "vllm":
        from tunelab.serve.vllm import serve_vllm

        serve_vllm(targets, host, port, api_key)
        return
    from tunelab.serve.schemas import MAX_TOKENS

    if not 1 <= max_tokens <= MAX_TOKENS:
        raise TunelabError(f"--max-tokens must be between 1 and {MAX_TOKENS}")
    if backend != "torch":
        raise TunelabError(f"--backend must be torch or vllm, not '{backend}'")
    import uvicorn

    from tunelab.serve.app import Settings, create_app
    from tunelab.serve.registry import Registry, parse_target
    from tunelab.serve.schemas import ApiError

    registry = Registry()
    for target in targets:
        name, path = parse_target(target)
        try:
            entry = registry.add(name, path)
        except ApiError as e:
            raise TunelabError(e.message) from None
        console.print(f"[green]serving[/] {name} ({entry.task}, base {entry.predictor.cfg.model.name}) from {path}")
    batching = "off" if max_batch <= 1 else f"window {batch_window_ms:g} ms, up to {max_batch} per call"
    console.print(f"Listening on http://{host}:{port} (docs /docs, OpenAPI /openapi.json; batching {batching}"
                  f"{'; API key required' if api_key else ''})")
    console.quiet = True  # per-request progress bars of predict/generate would flood the log
    app = create_app(registry, Settings(api_key, batch_window_ms, max_batch, max_tokens))
    uvicorn.run(app, host=host, port=port, log_level="info", access_log=access_log)
