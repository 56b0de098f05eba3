"""`ragtune serve`: an OpenAI-compatible API over knowledge bases, with citations, and a web UI.

    from ragtune.serve import ServeSettings, ServeState, create_app
    state = ServeState.open(["kb/"], ServeSettings())
    app = create_app(state)          # any ASGI server; `ragtune serve kb/` runs it on uvicorn

Nothing here is imported by `import ragtune`; FastAPI and uvicorn load only when used.
"""

from __future__ import annotations

__all__ = ["ServeSettings", "ModelSettings", "ServeState", "create_app"]


def __getattr__(name):
    if name in ("ServeSettings", "ModelSettings"):
        from . import settings

        return getattr(settings, name)
    if name == "ServeState":
        from .state import ServeState

        return ServeState
    if name == "create_app":
        from .app import create_app

        return create_app
    raise AttributeError(name)
