"""Running the app on uvicorn: in the foreground (`ragtune serve`) or in a background thread
(tests, benchmarks, notebooks), always a real HTTP server on a real socket.
"""

from __future__ import annotations

import logging
import socket
import threading
import time

log = logging.getLogger(__name__)


def uvicorn_config(app, host: str, port: int, *, max_connections: int = 512, log_level: str = "warning"):
    """uvicorn settings: connections beyond `max_connections` get 503 at once (a bound on sockets
    and memory under a flood); keep-alive is short so idle clients do not hold them."""
    import uvicorn

    return uvicorn.Config(app, host=host, port=port, log_level=log_level, access_log=False, lifespan="on",
                          limit_concurrency=max_connections, timeout_keep_alive=5, timeout_graceful_shutdown=10,
                          server_header=False, proxy_headers=False)


def run(app, host: str, port: int, **options) -> None:
    """Serve until interrupted (Ctrl-C or SIGTERM stop it gracefully)."""
    import uvicorn

    uvicorn.Server(uvicorn_config(app, host, port, **options)).run()


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as probe:
        probe.bind((host, 0))
        return probe.getsockname()[1]


class BackgroundServer:
    """`with BackgroundServer(app) as server: httpx.get(server.url + "/healthz")`."""

    def __init__(self, app, host: str = "127.0.0.1", port: int | None = None, **options):
        import uvicorn

        self.host, self.port = host, port or free_port(host)
        self.server = uvicorn.Server(uvicorn_config(app, self.host, self.port, **options))
        self.thread = threading.Thread(target=self.server.run, name="ragtune-serve", daemon=True)

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def start(self, timeout: float = 30.0) -> "BackgroundServer":
        self.thread.start()
        deadline = time.monotonic() + timeout
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError(f"the server did not start on {self.url}")
            time.sleep(0.02)
        return self

    def stop(self, timeout: float = 15.0) -> None:
        self.server.should_exit = True
        self.thread.join(timeout)

    def __enter__(self) -> "BackgroundServer":
        return self.start()

    def __exit__(self, *_exc) -> None:
        self.stop()
