"""Single-flight of identical misses: while one request runs the model for a cache key, the
identical requests that arrive meanwhile wait for its answer instead of running the model
too.

In this process the first miss of a key *leads*: it holds a future under the key, and the
misses after it await that future, at most ``wait_s``. With a shared store (Redis) the
leader also takes a short lock ``lock:cache:<key>`` (``state.locks.Locks.take``, renewed
while held), so that misses in other processes wait too: they look for the answer in the
store every ``poll_s`` while the lock is held (one process's misses wait behind one of
them, so a process polls once per key). The leader stores its answer, resolves its future
with it and then, once the write landed, releases the lock.

A follower replays the answer as a hit, in its own shape (a stream, or JSON), exactly as a
later hit would. It runs the model itself when the leader failed or kept no answer (the
future resolves with None, or the lock went away without an answer: the leader died and
its lease ran out), or after ``wait_s``. The key holds the tenant, so no two tenants ever
wait for each other's answer.
"""

from __future__ import annotations

import asyncio
import logging
import time

from autoglm.cache.store import Store, StoreDown
from autoglm.state.locks import Lease, Locks

log = logging.getLogger("autoglm.cache")
LEASE_S = 5.0  # the cross-process lock's lease: a dead leader frees its followers after it
POLL_S = 0.05


class Lead:
    """This request runs the model for ``key``; ``done`` once it is over (exactly once,
    from the cache stage's ``after`` hook: it neither blocks nor raises)."""

    __slots__ = ("flights", "key", "future", "lease")

    def __init__(self, flights: Flights, key: str, future: asyncio.Future[bytes | None] | None,
                 lease: Lease | None) -> None:
        self.flights = flights
        self.key = key
        self.future = future  # what this process's followers wait for (None: nobody's)
        self.lease = lease  # the cross-process lock, when this request took it

    def done(self, value: bytes | None) -> None:
        """Store ``value`` (the answer's stored form, or None: not kept) and hand it to the
        followers."""
        self.flights.land(self, value)


class Flights:
    def __init__(self, store: Store, locks: Locks | None = None, *, wait_s: float,
                 poll_s: float = POLL_S, lease_s: float = LEASE_S) -> None:
        self.store = store
        self.locks = locks  # None: this process's misses only
        self.wait_s = wait_s
        self.poll_s = poll_s
        self.lease_s = lease_s
        self._local: dict[str, asyncio.Future[bytes | None]] = {}
        self._releases: set[asyncio.Task[None]] = set()

    def __len__(self) -> int:
        return len(self._local)

    async def join(self, key: str) -> bytes | Lead:
        """After a miss: the answer a leader made meanwhile (to replay), or a ``Lead``
        (run the model, then ``Lead.done``)."""
        ahead = self._local.get(key)
        if ahead is not None:
            value = await self._follow(key, ahead)
            return value if value is not None else Lead(self, key, None, None)
        future: asyncio.Future[bytes | None] = asyncio.get_running_loop().create_future()
        self._local[key] = future
        try:
            if self.locks is None:
                return Lead(self, key, future, None)
            lease = await asyncio.to_thread(self.locks.take, self._lock(key),
                                            lease_s=self.lease_s, renew_for_s=self.wait_s)
            if lease is not None:
                return Lead(self, key, future, lease)
            value = await self._follow_elsewhere(key)
        except BaseException:
            self._settle(key, future, None)
            raise
        if value is None:
            return Lead(self, key, future, None)  # runs the model, and leads this process
        self._settle(key, future, value)
        return value

    def land(self, lead: Lead, value: bytes | None) -> None:
        written = self.store.put(lead.key, value) if value is not None else None
        if lead.future is not None:
            self._settle(lead.key, lead.future, value)
        if lead.lease is not None and lead.lease.held is not None:
            try:
                task = asyncio.get_running_loop().create_task(
                    self._release(written, lead.lease))
            except RuntimeError:  # no loop (a synchronous caller): the lease ends it
                return
            self._releases.add(task)
            task.add_done_callback(self._releases.discard)

    async def settled(self) -> None:
        """Every lock of a finished leader is released (shutdown and tests)."""
        while self._releases:
            await asyncio.gather(*list(self._releases), return_exceptions=True)

    # --- inside -------------------------------------------------------------------------------
    def _lock(self, key: str) -> str:
        return f"cache:{key}"

    def _settle(self, key: str, future: asyncio.Future[bytes | None],
                value: bytes | None) -> None:
        if self._local.get(key) is future:
            del self._local[key]
        if not future.done():
            future.set_result(value)

    async def _follow(self, key: str, ahead: asyncio.Future[bytes | None]) -> bytes | None:
        try:  # shielded: a follower whose client went away does not cancel the leader's
            return await asyncio.wait_for(asyncio.shield(ahead), self.wait_s)
        except TimeoutError:
            if self._local.get(key) is ahead:  # stuck: the next miss leads again
                del self._local[key]
            return None

    async def _follow_elsewhere(self, key: str) -> bytes | None:
        """Another process leads: its answer from the store, or None (it is gone without
        one, the wait is over, or the store is away)."""
        locks = self.locks
        if locks is None:
            return None
        deadline = time.monotonic() + self.wait_s
        try:
            while time.monotonic() < deadline:
                await asyncio.sleep(self.poll_s)
                value = await self.store.get(key)
                if value is not None:
                    return value
                if not await asyncio.to_thread(locks.held, self._lock(key)):
                    return await self.store.get(key)  # it may have landed just before
        except StoreDown:
            return None
        return None

    async def _release(self, written: asyncio.Task[None] | None, lease: Lease) -> None:
        """After the answer is in the store: a follower elsewhere that sees the lock gone
        then finds it there."""
        try:
            if written is not None:
                await asyncio.wait([written])
            await asyncio.to_thread(lease.release)
        except Exception:  # noqa: BLE001 - the lease ends it anyway
            log.warning("a response cache lock could not be released", exc_info=True)

