"""Backpressure and bounds: the generation gate (429 beyond capacity), a readers-writer lock for the
knowledge base, and the request-size guard.

Why a gate in front of the model rather than an unbounded queue: every waiting request holds its
body, its retrieved passages and a socket; under a burst an unbounded queue grows memory without
limit and answers nobody in time. The gate admits `slots` requests to decode and `queue` more to
wait (waiting costs no thread: it is an asyncio semaphore), and refuses the rest at once with 429
and a Retry-After estimated from how long answers take now.
"""

from __future__ import annotations

import asyncio
import math
import threading
import time
from collections import deque
from contextlib import contextmanager

from starlette.exceptions import HTTPException


class Overloaded(Exception):
    """Every slot is busy and the queue is full."""

    def __init__(self, retry_after: int):
        super().__init__(f"the server is at capacity; retry after {retry_after} s")
        self.retry_after = retry_after


class GenerationGate:
    """Admission for one model: `slots` run at once, `queue` wait, the rest get Overloaded."""

    def __init__(self, slots: int, queue: int):
        self.slots, self.queue = slots, queue
        self.active = 0
        self.waiting = 0
        self._semaphore: asyncio.Semaphore | None = None
        self._recent: deque[float] = deque(maxlen=32)  # seconds each recent admission held a slot

    @property
    def capacity(self) -> int:
        return self.slots + self.queue

    def retry_after(self) -> int:
        """Seconds until a slot is likely free: queued work divided over the slots, at the recent pace."""
        typical = sum(self._recent) / len(self._recent) if self._recent else 2.0
        return max(1, math.ceil(typical * (self.waiting + 1) / self.slots))

    async def acquire(self) -> float:
        """Wait for a slot (or raise Overloaded at once); returns the time the slot was granted."""
        if self._semaphore is None:
            self._semaphore = asyncio.Semaphore(self.slots)  # created in the serving loop
        if self.active + self.waiting >= self.capacity:
            raise Overloaded(self.retry_after())
        self.waiting += 1
        try:
            await self._semaphore.acquire()
        finally:
            self.waiting -= 1
        self.active += 1
        return time.perf_counter()

    def release(self, granted: float) -> None:
        """Called in the event loop when the work that held the slot has really stopped."""
        self._recent.append(time.perf_counter() - granted)
        self.active -= 1
        self._semaphore.release()


class ReadWriteLock:
    """Many readers (searches, retrieval for answers) or one writer (upload, delete, index catch-up).

    Writer-preferring: once a writer waits, new readers queue behind it, so an upload is not starved
    by a steady stream of searches. `writing` tells whether the calling thread holds the write side.
    """

    def __init__(self):
        self._cond = threading.Condition()
        self._readers = 0
        self._writer: int | None = None
        self._writers_waiting = 0

    @contextmanager
    def read(self):
        with self._cond:
            while self._writer is not None or self._writers_waiting:
                self._cond.wait()
            self._readers += 1
        try:
            yield
        finally:
            with self._cond:
                self._readers -= 1
                if not self._readers:
                    self._cond.notify_all()

    @contextmanager
    def write(self):
        me = threading.get_ident()
        with self._cond:
            self._writers_waiting += 1
            try:
                while self._writer is not None or self._readers:
                    self._cond.wait()
            finally:
                self._writers_waiting -= 1
            self._writer = me
        try:
            yield
        finally:
            with self._cond:
                self._writer = None
                self._cond.notify_all()

    @property
    def writing(self) -> bool:
        return self._writer == threading.get_ident()


class TooLarge(HTTPException):
    """An HTTPException so that FastAPI's body parsing passes it on instead of calling it a parse error."""

    def __init__(self, limit: int):
        super().__init__(413, f"the request body is over the limit of {limit} bytes")
        self.limit = limit

    def __str__(self) -> str:
        return self.detail


class BodyLimit:
    """ASGI middleware: refuse bodies over the limit by Content-Length, and stop reading a chunked
    body as soon as it passes the limit (a missing or lying Content-Length cannot get round it).
    `limit_for(path, method)` picks the limit (uploads get a larger one)."""

    def __init__(self, app, limit_for, on_reject):
        self.app, self.limit_for, self.on_reject = app, limit_for, on_reject

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        limit = self.limit_for(scope["path"], scope["method"])
        declared = dict(scope.get("headers") or []).get(b"content-length")
        if declared is not None:
            try:
                too_big = int(declared) > limit
            except ValueError:
                too_big = True
            if too_big:
                return await self.on_reject(scope, receive, send, TooLarge(limit))
        seen = 0
        started = False

        async def limited_receive():
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > limit:
                    raise TooLarge(limit)
            return message

        async def tracking_send(message):
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, limited_receive, tracking_send)
        except TooLarge as exc:
            if not started:
                await self.on_reject(scope, receive, send, exc)
