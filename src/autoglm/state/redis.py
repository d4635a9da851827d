"""``RedisLink``: the one Redis connection of a process, and whether Redis is usable now.

Set ``redis_url`` and limits, the response cache, the batch queue and single-flight locks
are shared by every gateway process and replica through it; leave it unset and each of
them has its own embedded form (in-process limits, the control-plane database's queue),
with the same API.

Redis going down must never take inference down. A failed call marks the link *down*
for ``retry_s``; while down, ``available`` is False and callers take their fallback
(per-process limits, cache bypassed, new batches refused with a 503) without waiting
on a dead socket. The first call after ``retry_s`` is the probe: when it succeeds the
link is up again and everything recovers by itself. ``/readyz`` reports ``degraded``
while the link is down.

Keys are ``<redis_prefix><name>`` (default ``autoglm:``), so several deployments (and
tests) can share one Redis. The URL may hold a password: it is never logged; ``where``
is the URL without it.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar
from urllib.parse import urlsplit, urlunsplit

import redis
import redis.asyncio as aredis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

log = logging.getLogger("autoglm.state")
T = TypeVar("T")

# what a Redis that is down, restarting or overloaded raises
DOWN_ERRORS: tuple[type[BaseException], ...] = (
    redis.exceptions.ConnectionError, redis.exceptions.TimeoutError,
    redis.exceptions.BusyLoadingError, OSError)


class RedisDown(Exception):
    """Redis cannot be used right now; the caller takes its fallback."""


def redact(url: str) -> str:
    """``url`` without its user info (password)."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    if parts.port:
        host = f"{host}:{parts.port}"
    return urlunsplit((parts.scheme, host, parts.path, "", ""))


class RedisLink:
    def __init__(self, url: str, *, prefix: str = "autoglm:", timeout_s: float = 0.5,
                 retry_s: float = 1.0) -> None:
        self.url = url
        self.where = redact(url)
        self.prefix = prefix
        self.retry_s = retry_s
        self._timeout_s = timeout_s
        # a pooled connection that went stale when Redis restarted is reconnected once,
        # at once, instead of failing the call (and marking a Redis that is back down)
        self.client: aredis.Redis = aredis.from_url(
            url, socket_connect_timeout=timeout_s, socket_timeout=timeout_s,
            health_check_interval=30, decode_responses=False,
            retry=Retry(NoBackoff(), 1, supported_errors=(redis.exceptions.ConnectionError,)))
        self._down_until = 0.0
        self._down_since: float | None = None
        self._reason = ""

    def key(self, *parts: str) -> str:
        return self.prefix + ":".join(parts)

    def sync_client(self) -> redis.Redis:
        """A blocking client on the same Redis (threads, the CLI, workers' housekeeping)."""
        return redis.Redis.from_url(self.url, socket_connect_timeout=self._timeout_s,
                                    socket_timeout=self._timeout_s)

    # --- health -----------------------------------------------------------------------------
    @property
    def available(self) -> bool:
        """False while marked down; True again once ``retry_s`` passed (the next call probes)."""
        return time.monotonic() >= self._down_until

    @property
    def down(self) -> bool:
        """Whether the last call failed and none has succeeded since (for ``/readyz``)."""
        return self._down_since is not None

    @property
    def reason(self) -> str:
        return self._reason

    def mark_down(self, exc: BaseException) -> None:
        first = self._down_since is None
        self._down_until = time.monotonic() + self.retry_s
        self._reason = " ".join(str(exc).split())[:200] or type(exc).__name__
        if first:
            self._down_since = time.monotonic()
            log.warning("redis unreachable; falling back until it returns",
                        extra={"redis": self.where, "reason": self._reason})

    def mark_up(self) -> None:
        if self._down_since is not None:
            log.warning("redis reachable again", extra={
                "redis": self.where, "down_s": round(time.monotonic() - self._down_since, 1)})
            self._down_since = None
            self._reason = ""

    async def call(self, fn: Callable[[aredis.Redis], Awaitable[T]]) -> T:
        """``fn(client)``; ``RedisDown`` at once while marked down, or when it fails."""
        if not self.available:
            raise RedisDown(self._reason)
        try:
            out = await fn(self.client)
        except DOWN_ERRORS as exc:
            self.mark_down(exc)
            raise RedisDown(self._reason) from None
        if self._down_since is not None:
            self.mark_up()
        return out

    async def ping(self) -> bool:
        try:
            await self.call(lambda c: c.ping())
        except RedisDown:
            return False
        return True

    async def close(self) -> None:
        await self.client.aclose()
