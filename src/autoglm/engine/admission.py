"""Slots and the fair queue in front of them.

At most ``slots`` requests hold a permit; the rest wait, bounded by ``max_queue``.
Waiters are served round-robin across owners (API keys), first-come within one owner,
so one client sending many requests cannot starve the others. A waiter that gives up
(timeout, client gone) leaves the queue; a permit handed to a waiter that just left
is passed on at once.
"""

from __future__ import annotations

import asyncio
import math
from collections import OrderedDict, deque

from autoglm.errors import OverloadedError
from autoglm.settings import Settings


class Permit:
    __slots__ = ("_queue", "_released")

    def __init__(self, queue: AdmissionQueue) -> None:
        self._queue = queue
        self._released = False

    def release(self) -> None:
        if not self._released:
            self._released = True
            self._queue._release()


class AdmissionQueue:
    def __init__(self, slots: int, max_queue: int, timeout_s: float,
                 max_share: float = 1.0) -> None:
        self.slots = slots
        self.max_queue = max_queue
        self.timeout_s = timeout_s
        # One owner may hold at most this many of the waiting places, so that a single
        # caller flooding the queue cannot shut everyone else out of it.
        self.max_per_owner = max(1, math.ceil(max_queue * max_share))
        self.busy = 0
        self._waiters: OrderedDict[str, deque[asyncio.Future[None]]] = OrderedDict()
        self._depth = 0

    @classmethod
    def for_settings(cls, capacity: int, settings: Settings) -> AdmissionQueue:
        return cls(capacity, settings.max_queue, settings.queue_timeout_s,
                   settings.max_queue_share)

    @property
    def depth(self) -> int:
        return self._depth

    async def acquire(self, owner: str) -> Permit:
        if self.busy < self.slots and self._depth == 0:
            self.busy += 1
            return Permit(self)
        if self._depth >= self.max_queue:
            raise OverloadedError(
                f"the server is at capacity ({self.slots} busy, {self._depth} queued); "
                "retry shortly",
                retry_after=1,
            )
        mine = self._waiters.get(owner)
        if mine is not None and len(mine) >= self.max_per_owner:
            raise OverloadedError(
                f"you already have {len(mine)} requests waiting for this model (the most one "
                "caller may queue); retry when some have finished",
                retry_after=1,
            )
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.setdefault(owner, deque()).append(fut)
        self._depth += 1
        try:
            await asyncio.wait_for(asyncio.shield(fut), self.timeout_s)
        except (asyncio.TimeoutError, asyncio.CancelledError) as exc:
            if fut.done() and not fut.cancelled():
                self._release()  # we were handed a slot while leaving: pass it on
            else:
                fut.cancel()
                self._forget(owner, fut)
            if isinstance(exc, asyncio.TimeoutError):
                raise OverloadedError(
                    f"no slot became free within {self.timeout_s:g} s; retry shortly",
                    retry_after=2,
                ) from None
            raise
        return Permit(self)

    def _forget(self, owner: str, fut: asyncio.Future[None]) -> None:
        q = self._waiters.get(owner)
        if q is not None and fut in q:
            q.remove(fut)
            self._depth -= 1
            if not q:
                del self._waiters[owner]

    def _release(self) -> None:
        while self._waiters:
            owner, q = next(iter(self._waiters.items()))
            fut = q.popleft()
            self._depth -= 1
            del self._waiters[owner]
            if q:  # round-robin: this owner goes to the back of the line
                self._waiters[owner] = q
            if not fut.done():
                fut.set_result(None)  # the slot passes straight to the waiter
                return
        self.busy -= 1
