"""Prometheus metrics, one registry per app (no process-global state)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from starlette.requests import Request
from starlette.responses import Response

from autoglm.errors import AuthenticationError

_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120)
_TTFT_BUCKETS = (0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1, 2, 5, 10, 30)

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
        self.cache = Counter(
            "autoglm_response_cache", "Response cache lookups by model and result: hit, "
            "miss, bypass (asked, but not cacheable or the shared store down).",
            ["model", "result"], registry=r,
        )
        self._children: dict[tuple[str, str, int], tuple[Any, Any]] = {}
        self._models: dict[str, tuple[Any, Any, Any]] = {}
        self._cache: dict[tuple[str, str], Any] = {}

    def watch_engines(self, engines: dict[str, Any]) -> None:
        """Engine and instance state, read at scrape time."""
        self.registry.register(_EngineCollector(engines))

    def observe_request(self, route: str, model: str, status: int, seconds: float) -> None:
        key = (route, model, status)
        children = self._children.get(key)
        if children is None:  # labels() costs more than the update; look each set up once
            children = (self.requests.labels(route, model, str(status)),
                        self.duration.labels(route, model))
            if len(self._children) < 10_000:  # bounded: routes and models are few
                self._children[key] = children
        children[0].inc()
        children[1].observe(seconds)

    def per_model(self, model: str) -> tuple[Any, Any, Any]:
        """(ttft, prompt tokens, completion tokens) of one model."""
        found = self._models.get(model)
        if found is None:
            found = (self.ttft.labels(model), self.prompt_tokens.labels(model),
                     self.completion_tokens.labels(model))
            if len(self._models) < 10_000:
                self._models[model] = found
        return found

    def cache_result(self, model: str, result: str) -> None:
        """One response cache lookup of ``model`` and what it found."""
        child = self._cache.get((model, result))
        if child is None:
            child = self.cache.labels(model, result)
            if len(self._cache) < 10_000:
                self._cache[(model, result)] = child
        child.inc()


async def metrics_endpoint(request: Request) -> Response:
    """Prometheus text; model ids and instance names are in it, so it needs a key that may
    read engines (Prometheus: ``authorization: {credentials: ...}``) unless ``ops_public``."""
    from autoglm.api.health import may_see_operations

    if not await may_see_operations(request):
        raise AuthenticationError(
            "Metrics need an API key that may read engines (Authorization: Bearer <key>), "
            "or ops_public: true.")
    metrics: Metrics = request.app.state.metrics
    return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)


class _EngineCollector(Collector):
    def __init__(self, engines: dict[str, Any]) -> None:
        self.engines = engines

    def describe(self) -> list:
        return []  # families are produced at collect time only

    def collect(self) -> Iterator[Metric]:
        fams = {
            "up": GaugeMetricFamily("autoglm_engine_up", "1 when the model's engine can serve.",
                                    labels=["model"]),
            "slots": GaugeMetricFamily("autoglm_slots", "Slots (or instances) of the engine.",
                                       labels=["model"]),
            "busy": GaugeMetricFamily("autoglm_busy_slots", "Requests being generated now.",
                                      labels=["model"]),
            "queued": GaugeMetricFamily("autoglm_queue_depth", "Requests waiting for a slot.",
                                        labels=["model"]),
            "restarts": CounterMetricFamily("autoglm_engine_restarts",
                                            "Times the model's engine was restarted.",
                                            labels=["model"]),
        }
        inst_up = GaugeMetricFamily("autoglm_upstream_up", "1 when the instance takes traffic.",
                                    labels=["model", "instance"])
        inst_busy = GaugeMetricFamily("autoglm_upstream_in_flight",
                                      "Requests in flight to the instance.",
                                      labels=["model", "instance"])
        inst_recent = GaugeMetricFamily("autoglm_upstream_recent_failures",
                                        "Failures of the instance within its fail_timeout window.",
                                        labels=["model", "instance"])
        inst_req = CounterMetricFamily("autoglm_upstream_requests",
                                       "Requests sent to the instance.", labels=["model", "instance"])
        inst_fail = CounterMetricFamily("autoglm_upstream_failures",
                                        "Failures of the instance (connect, 5xx, broken stream).",
                                        labels=["model", "instance"])
        prefix = _PrefixFamilies()
        for model, engine in self.engines.items():
            for key, value in engine.stats().items():
                fams[key].add_metric([model], value)
            prefix.add(model, engine)
            describe = getattr(engine, "describe", None)
            for inst in describe(with_url=False) if describe else []:
                labels = [model, inst["name"]]
                inst_up.add_metric(labels, 1 if inst["state"] == "up" else 0)
                inst_busy.add_metric(labels, inst["in_flight"])
                inst_recent.add_metric(labels, inst["recent_failures"])
                inst_req.add_metric(labels, inst["requests"])
                inst_fail.add_metric(labels, inst["failures_total"])
        yield from fams.values()
        yield from (inst_up, inst_busy, inst_recent, inst_req, inst_fail)
        yield from prefix.families()


class _PrefixFamilies:
    """The embedded engine's prefix cache (``engine/llamacpp/prefix.py``), as the engine
    last reported it: counters restart with the engine process."""

    def __init__(self) -> None:
        self.hits = CounterMetricFamily(
            "autoglm_prefix_cache_hits", "Requests that reused a cached prompt prefix, by "
            "where it was: slot (its own), copy (another slot's), store (host memory).",
            labels=["model", "source"])
        self.misses = CounterMetricFamily(
            "autoglm_prefix_cache_misses", "Requests that found no cached prefix to reuse.",
            labels=["model"])
        self.reused = CounterMetricFamily(
            "autoglm_prefix_cache_reused_tokens", "Prompt tokens served from cached prefixes "
            "instead of being prefilled.", labels=["model"])
        self.evictions = CounterMetricFamily(
            "autoglm_prefix_cache_evictions", "Cached prefixes dropped for room (host store "
            "full or off).", labels=["model"])

    def add(self, model: str, engine: Any) -> None:
        stats = getattr(engine, "prefix_stats", None)
        found = stats() if stats is not None else None
        if not found:
            return
        for source, n in (found.get("hits") or {}).items():
            self.hits.add_metric([model, source], n)
        self.misses.add_metric([model], found.get("misses", 0))
        self.reused.add_metric([model], found.get("reused_tokens", 0))
        self.evictions.add_metric([model], found.get("evictions", 0))

    def families(self) -> Iterator[Metric]:
        yield from (self.hits, self.misses, self.reused, self.evictions)
