"""The app factory: `create_app(state)` wires routes, guards, metrics and the web UI around a
ServeState. No globals: the state (models, KBs, keys) is built by the caller and passed in.

Request path, outermost first: metrics (counts and times everything, 401s and 413s included),
API-key check (before any body is read), body-size guard, then FastAPI's routing with handlers that
turn every error into OpenAI-style JSON.
"""

from __future__ import annotations

from contextlib import asynccontextmanager
from pathlib import Path

from fastapi import FastAPI, Request
from fastapi.responses import RedirectResponse
from fastapi.staticfiles import StaticFiles
from starlette.datastructures import Headers

from .. import __version__
from . import errors
from .auth import presented_key
from .errors import error_response
from .jobs import ClientGone
from .limits import BodyLimit
from .metrics import MetricsMiddleware

STATIC = Path(__file__).parent / "static"
OPEN_PATHS = ("/healthz", "/favicon.ico", "/docs", "/openapi.json")


def is_open(path: str) -> bool:
    """Paths served without a key: health, the UI's static files (they hold no data), the API docs."""
    return path == "/" or path in OPEN_PATHS or path == "/ui" or path.startswith("/ui/")


class APIKeyMiddleware:
    """401 unless the request carries a configured key (when keys are configured at all)."""

    def __init__(self, app, keys):
        self.app, self.keys = app, keys

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or not self.keys.enabled or is_open(scope["path"]):
            return await self.app(scope, receive, send)
        if self.keys.check(presented_key(Headers(scope=scope))):
            return await self.app(scope, receive, send)
        response = error_response(401, "a valid API key is required: send `Authorization: Bearer KEY`",
                                  code="invalid_api_key", headers={"WWW-Authenticate": "Bearer"})
        await response(scope, receive, send)


def create_app(state, *, close_state: bool = False) -> FastAPI:
    """A FastAPI app serving `state`; with close_state the app closes it when it shuts down."""
    from .openai_routes import router as openai_router
    from .ragtune_routes import router as ragtune_router

    @asynccontextmanager
    async def lifespan(_app):
        yield
        if close_state:
            state.close()

    app = FastAPI(title="ragtune", version=__version__, lifespan=lifespan,
                  description="OpenAI-compatible answers from your knowledge base, with citations.")
    app.state.ragtune = state
    errors.install(app)

    @app.exception_handler(ClientGone)
    async def _gone(_request: Request, _exc: ClientGone):
        return error_response(499, "the client closed the connection", code="client_closed")

    app.include_router(openai_router)
    app.include_router(ragtune_router)

    @app.get("/", include_in_schema=False)
    async def _root():
        return RedirectResponse("/ui/")

    if STATIC.is_dir():
        app.mount("/ui", StaticFiles(directory=STATIC, html=True), name="ui")

    settings = state.settings

    def limit_for(path: str, method: str) -> int:
        return settings.max_upload_bytes if method == "POST" and path == "/v1/documents" else settings.max_request_bytes

    async def reject(scope, receive, send, exc):
        await error_response(413, str(exc), code="request_too_large")(scope, receive, send)

    # add_middleware wraps: the last added runs first
    app.add_middleware(BodyLimit, limit_for=limit_for, on_reject=reject)
    app.add_middleware(APIKeyMiddleware, keys=state.keys)
    app.add_middleware(MetricsMiddleware, metrics=state.metrics)
    return app
