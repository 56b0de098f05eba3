"""Prometheus metrics for one app: requests, latency, queue depth, tokens, time to first token.

Each app gets its own CollectorRegistry (no process-wide globals), so two servers in one process
(tests, embedding the app) do not mix their counts. Routes are labelled by their template
(`/v1/documents/{doc_id}`), never by the raw path, so label cardinality stays bounded.
"""

from __future__ import annotations

import time

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120)


class Metrics:
    def __init__(self):
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.requests = Counter("ragtune_requests", "HTTP requests by route, method and status",
                                ["route", "method", "status"], registry=r)
        self.latency = Histogram("ragtune_request_seconds", "Time to the end of the response, by route",
                                 ["route"], buckets=LATENCY_BUCKETS, registry=r)
        self.queue_depth = Gauge("ragtune_queue_depth", "Generation requests waiting for a slot", ["model"], registry=r)
        self.active = Gauge("ragtune_active_sequences", "Generation requests holding a slot", ["model"], registry=r)
        self.capacity = Gauge("ragtune_queue_capacity", "Slots plus queue length per model", ["model"], registry=r)
        self.rejected = Counter("ragtune_rejected", "Requests refused with 429 because the queue was full",
                                ["model"], registry=r)
        self.tokens = Counter("ragtune_tokens", "Tokens processed, by model and kind (prompt, completion)",
                              ["model", "kind"], registry=r)
        self.first_token = Histogram("ragtune_time_to_first_token_seconds", "From admission to the first answer text",
                                     ["model"], buckets=LATENCY_BUCKETS, registry=r)
        self.disconnects = Counter("ragtune_client_disconnects", "Generations stopped because the client went away",
                                   ["model"], registry=r)

    def observe_gate(self, model: str, gate) -> None:
        self.queue_depth.labels(model).set(gate.waiting)
        self.active.labels(model).set(gate.active)
        self.capacity.labels(model).set(gate.capacity)

    def render(self) -> tuple[bytes, str]:
        return generate_latest(self.registry), CONTENT_TYPE_LATEST


class MetricsMiddleware:
    """ASGI middleware counting every HTTP request and timing it to the last byte sent (streams too)."""

    def __init__(self, app, metrics: Metrics):
        self.app, self.metrics = app, metrics

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        started = time.perf_counter()
        status = {"code": 500}

        async def counting_send(message):
            if message["type"] == "http.response.start":
                status["code"] = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, counting_send)
        finally:
            route = _route_template(scope)
            self.metrics.requests.labels(route, scope["method"], str(status["code"])).inc()
            self.metrics.latency.labels(route).observe(time.perf_counter() - started)


def _route_template(scope) -> str:
    route = scope.get("route")
    path = getattr(route, "path", None)
    if path:
        return path
    if scope["path"].startswith("/ui"):
        return "/ui"
    return "unmatched"
