"""One generation request: admitted through the gate, run in a worker thread, bridged to asyncio.

The generator is synchronous (it streams through a callback in the calling thread), so each answer
runs in the generation pool; its text pieces reach the event loop through `call_soon_threadsafe`.
Why the slot is released from the worker's completion and not when the response ends: after a
client disconnects the decoder is still busy until it notices, and only then is the slot free.
It notices at the next token: the callback raises ClientGone, which the llama.cpp backend turns
into a cancelled sequence (its KV slot freed at once).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time

from .errors import APIError
from .limits import Overloaded

log = logging.getLogger(__name__)
POLL_SECONDS = 0.25


class ClientGone(Exception):
    """The client closed the connection; the work for it stops."""


async def wait_or_disconnect(request, awaitable, *, on_late=None):
    """Await `awaitable` while watching the connection; ClientGone if the client leaves first.
    `on_late(result)` cleans up a result that arrived just as the client left."""
    task = asyncio.ensure_future(awaitable)
    while True:
        done, _ = await asyncio.wait({task}, timeout=POLL_SECONDS)
        if done:
            return task.result()
        if await request.is_disconnected():
            task.cancel()
            try:
                value = await task
            except asyncio.CancelledError:
                raise ClientGone() from None
            if on_late:
                on_late(value)
            raise ClientGone()


class AnswerJob:
    """`run(on_text, on_ready)` in a worker thread, holding one slot of `served.gate`."""

    def __init__(self, state, model, run, *, streaming: bool):
        self.state, self.model, self.run, self.streaming = state, model, run, streaming
        self.label = model.served.label
        self.cancel = threading.Event()
        self.queue: asyncio.Queue | None = None
        self.first_token: float | None = None
        self.granted = 0.0
        self._pending: list[tuple] = []

    # -- lifecycle ---------------------------------------------------------------------------
    async def start(self, request) -> None:
        gate, metrics = self.model.served.gate, self.state.metrics
        try:
            self.granted = await wait_or_disconnect(request, gate.acquire(), on_late=gate.release)
        except Overloaded:
            metrics.rejected.labels(self.label).inc()
            raise
        finally:
            metrics.observe_gate(self.label, gate)
        loop = asyncio.get_running_loop()
        self.queue = asyncio.Queue()

        def release(_future) -> None:
            def in_loop():
                gate.release(self.granted)
                metrics.observe_gate(self.label, gate)

            with contextlib.suppress(RuntimeError):  # the loop is gone: the server is shutting down
                loop.call_soon_threadsafe(in_loop)

        def post(item) -> None:
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(self.queue.put_nowait, item)

        try:
            future = self.state.generation_pool.submit(self._work, post)
        except RuntimeError:  # the pool was shut down
            gate.release(self.granted)
            raise APIError(503, "the server is shutting down", code="shutting_down") from None
        future.add_done_callback(release)

    def _work(self, post) -> None:
        def on_text(piece: str, kind: str = "content") -> None:
            if self.cancel.is_set():
                raise ClientGone()
            if self.first_token is None:
                self.first_token = time.perf_counter()
                self.state.metrics.first_token.labels(self.label).observe(self.first_token - self.granted)
            if self.streaming:
                post(("text" if kind == "content" else "reasoning", piece))

        try:
            result = self.run(on_text, lambda: post(("ready", None)))
        except ClientGone:
            self.state.metrics.disconnects.labels(self.label).inc()
            log.info("%s: the client left; generation stopped and its slot freed", self.label)
            post(("gone", None))
            return
        except BaseException as exc:  # delivered to the request, which answers with an error
            post(("error", exc))
            return
        metrics = self.state.metrics
        metrics.tokens.labels(self.label, "prompt").inc(result.prompt_tokens)
        metrics.tokens.labels(self.label, "completion").inc(result.completion_tokens)
        post(("done", result))

    # -- reading -----------------------------------------------------------------------------
    async def _next(self, request):
        try:
            return await wait_or_disconnect(request, self.queue.get())
        except ClientGone:
            self.cancel.set()
            raise

    async def result(self, request):
        """The whole answer (non-streaming); the worker stops if the client leaves meanwhile."""
        while True:
            kind, value = await self._next(request)
            if kind == "done":
                return value
            if kind == "error":
                raise value
            if kind == "gone":
                raise ClientGone()

    async def ready(self, request) -> None:
        """Wait until generation is about to start, so retrieval and prompt errors are still HTTP errors."""
        while True:
            kind, value = await self._next(request)
            if kind == "error":
                raise value
            if kind == "gone":
                raise ClientGone()
            if kind != "ready":
                self._pending.append((kind, value))
            if kind in ("ready", "done"):
                return

    async def events(self):
        """("text" or "reasoning", piece) ... then ("done", result) or ("error", exc). Stopping early
        cancels the work."""
        try:
            for item in self._pending:
                yield item
                if item[0] == "done":
                    return
            while True:
                item = await self.queue.get()
                if item[0] == "ready":
                    continue
                yield item
                if item[0] in ("done", "error", "gone"):
                    return
        finally:
            self.cancel.set()  # a no-op after "done"; otherwise the client left mid-stream
