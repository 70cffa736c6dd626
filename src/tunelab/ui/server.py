"""The UI's server: FastAPI with the Gradio app mounted at `/`, on 127.0.0.1 by default. Any other
address needs an access token (the UI launches jobs and reads the server's disk): every request must
then carry it, as `?token=...` once (it is kept in a cookie), a `tunelab_token` cookie, or an
`Authorization: Bearer` header."""

from __future__ import annotations

import hmac
import os
from pathlib import Path

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, RedirectResponse

from tunelab.errors import TunelabError

COOKIE = "tunelab_token"
LOCAL = ("127.0.0.1", "localhost", "::1")


def check_bind(host: str, token: str | None) -> None:
    if host not in LOCAL and not token:
        raise TunelabError(f"binding {host} exposes job launching and the server's disk; pass --token SECRET "
                           "(or set TUNELAB_UI_TOKEN), or bind 127.0.0.1")


def make_app(root: str | Path, token: str | None = None) -> FastAPI:
    import gradio as gr

    from tunelab.ui.app import build_blocks

    blocks, ctx = build_blocks(root)
    app = FastAPI(title="tunelab ui")

    if token:
        @app.middleware("http")
        async def require_token(request: Request, call_next):
            given = (request.query_params.get("token") or request.cookies.get(COOKIE)
                     or request.headers.get("authorization", "").removeprefix("Bearer ").strip())
            if not given or not hmac.compare_digest(given, token):
                return JSONResponse({"error": "missing or wrong access token; open the URL with ?token=..."}, status_code=401)
            if request.query_params.get("token"):  # first visit: keep it in a cookie, drop it from the URL
                response = RedirectResponse(request.url.remove_query_params("token"), status_code=303)
                response.set_cookie(COOKIE, token, httponly=True, samesite="strict")
                return response
            return await call_next(request)

    @app.get("/healthz")
    def health():
        return {"status": "ok", "root": str(ctx.root)}

    @app.on_event("shutdown")
    def stop_exports():
        ctx.jobs.shutdown()

    blocks.queue(default_concurrency_limit=4)
    return gr.mount_gradio_app(app, blocks, path="/", allowed_paths=[str(ctx.root)], ssr_mode=False,
                               footer_links=[])


def serve_ui(root: str, host: str = "127.0.0.1", port: int = 7860, token: str | None = None) -> None:
    import uvicorn

    token = token or os.environ.get("TUNELAB_UI_TOKEN")
    check_bind(host, token)
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
    app = make_app(root, token)
    from tunelab.console import console

    console.print(f"tunelab ui on http://{host}:{port}/" + ("?token=..." if token else "") + f"  (runs in {Path(root).resolve()})")
    uvicorn.run(app, host=host, port=port, log_level="warning")
