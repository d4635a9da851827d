"""``ResponseCache``: what the cache stages share in one app: the store, who opted in,
the single-flight of identical misses (``flight``), and the counters of what each lookup
found."""

from __future__ import annotations

from typing import Any

from autoglm.cache.flight import Flights
from autoglm.cache.store import MemoryStore, RedisStore, Store
from autoglm.settings import Settings
from autoglm.state.locks import Locks
from autoglm.state.redis import RedisLink

RESULTS = ("hit", "miss", "bypass")


class ResponseCache:
    """``tenants``: tenant ids whose requests use the cache without asking (any request
    may ask with ``X-AutoGLM-Cache: use``). ``metrics``: ``api.metrics.Metrics`` or None.
    ``flights``: identical misses wait for the first one's answer (None: each runs)."""

    def __init__(self, store: Store, *, tenants: frozenset[str] = frozenset(),
                 default_max_tokens: int = 512, metrics: Any = None,
                 flights: Flights | None = None) -> None:
        self.store = store
        self.tenants = tenants
        self.default_max_tokens = default_max_tokens
        self.metrics = metrics
        self.flights = flights

    @classmethod
    def from_settings(cls, settings: Settings, link: RedisLink | None,
                      metrics: Any = None, locks: Locks | None = None) -> ResponseCache:
        """In Redis with ``redis_url`` (shared by every process, and so is the single-flight,
        through ``locks``), else in this process."""
        ttl = settings.response_cache_ttl_s
        store: Store = (RedisStore(link, ttl) if link is not None else
                        MemoryStore(ttl, settings.response_cache_max_entries,
                                    settings.response_cache_max_bytes))
        wait_s = settings.response_cache_wait_s
        flights = (Flights(store, locks if link is not None else None, wait_s=wait_s)
                   if wait_s > 0 else None)
        return cls(store, tenants=frozenset(settings.response_cache_tenants),
                   default_max_tokens=settings.default_max_tokens, metrics=metrics,
                   flights=flights)

    def count(self, model: str, result: str) -> None:
        if self.metrics is not None:
            self.metrics.cache_result(model, result)
