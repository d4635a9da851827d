"""Prometheus metrics, one registry per app (no process-global state)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from starlette.requests import Request
from starlette.responses import Response

_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120)
_TTFT_BUCKETS = (0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1, 2, 5, 10, 30)

STATIC_ROUTES = frozenset(
    {"/v1/chat/completions", "/v1/completions", "/v1/models", "/healthz", "/readyz", "/metrics"}
)


def route_label(path: str) -> str:
    """A bounded label: known routes by template, everything else as 'unmatched'."""
    if path in STATIC_ROUTES:
        return path
    if path.startswith("/v1/models/"):
        return "/v1/models/{model}"
    return "unmatched"


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.requests = Counter(
            "autoglm_requests", "HTTP requests by route, model and status.",
            ["route", "model", "status"], registry=r,
        )
        self.duration = Histogram(
            "autoglm_request_duration_seconds", "Time from request to last response byte.",
            ["route", "model"], buckets=_LATENCY_BUCKETS, registry=r,
        )
        self.ttft = Histogram(
            "autoglm_time_to_first_token_seconds", "Time from request to the first answer token.",
            ["model"], buckets=_TTFT_BUCKETS, registry=r,
        )
        self.prompt_tokens = Counter(
            "autoglm_prompt_tokens", "Prompt tokens processed.", ["model"], registry=r
        )
        self.completion_tokens = Counter(
            "autoglm_completion_tokens", "Completion tokens generated.", ["model"], registry=r
        )
        self.queue_depth = Gauge(
            "autoglm_queue_depth", "Requests waiting for a free slot.", ["model"], registry=r
        )
        self.busy_slots = Gauge(
            "autoglm_busy_slots", "Slots generating right now.", ["model"], registry=r
        )
        self.slots = Gauge("autoglm_slots", "Slots of the engine.", ["model"], registry=r)
        self.engine_up = Gauge(
            "autoglm_engine_up", "1 when the model's engine is ready, else 0.", ["model"],
            registry=r,
        )
        self.engine_restarts = Gauge(
            "autoglm_engine_restarts", "Times the model's engine was restarted.", ["model"],
            registry=r,
        )

    def observe_request(self, route: str, model: str, status: int, seconds: float) -> None:
        self.requests.labels(route, model, str(status)).inc()
        self.duration.labels(route, model).observe(seconds)


async def metrics_endpoint(request: Request) -> Response:
    state = request.app.state
    metrics: Metrics = state.metrics
    for engine in state.engines.values():
        model = engine.model.id
        stats = engine.stats()
        metrics.busy_slots.labels(model).set(stats["busy"])
        metrics.queue_depth.labels(model).set(stats["queued"])
        metrics.slots.labels(model).set(stats["slots"])
        metrics.engine_up.labels(model).set(stats["up"])
        metrics.engine_restarts.labels(model).set(stats["restarts"])
    return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)
