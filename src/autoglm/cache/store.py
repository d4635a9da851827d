"""Where cached answers live: in this process (a bounded LRU), or in Redis (shared).

Both keep opaque bytes under a key for ``ttl_s`` and have the same small API: ``get``
(awaited on the request path, before admission), ``put`` (called from a stage's
``after`` hook, which must neither block nor raise) and ``settled`` (every write issued so
far has landed: shutdown and tests).

Without ``redis_url`` the store is this process's own: at most ``max_entries`` answers
and ``max_bytes`` bytes (key and value), the least recently used going first, and an
answer larger than a sixteenth of ``max_bytes`` is not kept (one answer must not empty
the cache). With ``redis_url`` every process shares one store: ``SET`` with a TTL under
``<redis_prefix>cache:<key>``; Redis's own ``maxmemory`` policy bounds it. While the link
is down (``state/redis.py``) a lookup raises ``StoreDown`` at once and the request is
answered by its engine (the cache is bypassed); writes are dropped.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import OrderedDict
from collections.abc import Callable

from autoglm.state.redis import RedisDown, RedisLink

log = logging.getLogger("autoglm.cache")
MAX_PENDING_WRITES = 1024  # writes to Redis in flight at once; beyond them, dropped


class StoreDown(Exception):
    """The shared store cannot be used right now: the request bypasses the cache."""


class MemoryStore:
    """A bounded LRU with a TTL, in this process; not shared with other processes."""

    shared = False

    def __init__(self, ttl_s: float, max_entries: int, max_bytes: int,
                 clock: Callable[[], float] = time.monotonic) -> None:
        if ttl_s <= 0 or max_entries < 1 or max_bytes < 1:
            raise ValueError("a memory store needs a positive TTL, entry and byte bound")
        self.ttl_s = ttl_s
        self.max_entries = max_entries
        self.max_bytes = max_bytes
        self.max_value = max(1, max_bytes // 16)
        self.clock = clock
        self.bytes = 0
        self._entries: OrderedDict[str, tuple[float, bytes]] = OrderedDict()

    def __len__(self) -> int:
        return len(self._entries)

    def values(self) -> list[bytes]:
        """Every stored value (tests check what is kept)."""
        return [v for _, v in self._entries.values()]

    async def get(self, key: str) -> bytes | None:
        found = self._entries.get(key)
        if found is None:
            return None
        if self.clock() >= found[0]:
            self._drop(key)
            return None
        self._entries.move_to_end(key)
        return found[1]

    def put(self, key: str, value: bytes) -> asyncio.Task[None] | None:
        size = len(key) + len(value)
        if size > self.max_value:
            return None
        if key in self._entries:
            self._drop(key)
        self._entries[key] = (self.clock() + self.ttl_s, value)
        self.bytes += size
        entries = self._entries
        while len(entries) > self.max_entries or self.bytes > self.max_bytes:
            old, (_, gone) = entries.popitem(last=False)
            self.bytes -= len(old) + len(gone)
        return None  # stored already: nothing to wait for

    def _drop(self, key: str) -> None:
        _, value = self._entries.pop(key)
        self.bytes -= len(key) + len(value)

    async def settled(self) -> None:
        return None


class RedisStore:
    """Entries in Redis under the link's prefix, shared by every gateway process."""

    shared = True

    def __init__(self, link: RedisLink, ttl_s: float) -> None:
        if ttl_s <= 0:
            raise ValueError("a Redis store needs a positive TTL")
        self.link = link
        self.ttl_ms = max(1, round(ttl_s * 1000))
        self._pending: set[asyncio.Task[None]] = set()

    def redis_key(self, key: str) -> str:
        return self.link.key("cache", key)

    async def get(self, key: str) -> bytes | None:
        name = self.redis_key(key)
        try:
            return await self.link.call(lambda c: c.get(name))
        except RedisDown:
            raise StoreDown() from None

    def put(self, key: str, value: bytes) -> asyncio.Task[None] | None:
        """Issued now, landed later: the request that made the answer does not wait (the
        write, to await where something must follow it; None: dropped)."""
        if not self.link.available or len(self._pending) >= MAX_PENDING_WRITES:
            return None
        try:
            task = asyncio.get_running_loop().create_task(self._set(self.redis_key(key), value))
        except RuntimeError:  # no loop (a synchronous caller): nothing to schedule on
            return None
        self._pending.add(task)
        task.add_done_callback(self._pending.discard)
        return task

    async def _set(self, name: str, value: bytes) -> None:
        try:
            await self.link.call(lambda c: c.set(name, value, px=self.ttl_ms))
        except RedisDown:
            pass  # the link logged it; the answer is simply not cached
        except Exception:  # noqa: BLE001 - a write that fails must not surface anywhere
            log.exception("a response cache write to Redis failed")

    async def settled(self) -> None:
        while self._pending:
            await asyncio.gather(*list(self._pending), return_exceptions=True)


Store = MemoryStore | RedisStore
