"""Single-flight locks across processes and hosts: a Redis key with a lease.

``Locks.hold(name)`` is a context manager. With ``redis_url`` it takes
``<prefix>lock:<name>``: ``SET NX PX`` with a random token, renewed by a thread every
third of the lease while held, and released only by its holder (compare and delete in one
script), so a holder that dies frees the lock when its lease runs out and never frees
someone else's. Waiting longer than ``wait_s`` is a ``LockBusyError`` (409, naming the
operation). Without Redis, or while it is away, ``hold`` is a no-op beside the local
guard each operation has anyway (a file lock for pulls, the database for key rotation):
single-flight is then per host, which is all one host needs.

``Locks.take(name)`` takes a lock only if it is free, without waiting (a ``Lease``, or
None when someone else holds it), and ``held(name)`` says whether someone does: the
response cache's single-flight of identical misses (``lock:cache:<key>``, a short lease)
uses them, its followers waiting for the answer while the lock is held.

Used by model pulls (``lock:pull:<name>``), key rotation (``lock:key-rotate:<key id>``),
engine starts (``lock:engine-start:<host>:<model>``) and the response cache.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import threading
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass

import redis

from autoglm.errors import LockBusyError
from autoglm.settings import Settings
from autoglm.state.redis import DOWN_ERRORS, redact

log = logging.getLogger("autoglm.state")

_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""
_RENEW = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('PEXPIRE', KEYS[1], ARGV[2]) end
return 0
"""


@dataclass
class _Held:
    client: redis.Redis
    key: str
    token: str
    stop: threading.Event
    renew: threading.Thread


@dataclass
class Lease:
    """A lock taken by ``Locks.take``; ``release`` it (once). Without Redis it holds
    nothing."""

    held: _Held | None

    def release(self) -> None:
        Locks._release(self.held)


class Locks:
    def __init__(self, url: str | None, *, prefix: str = "autoglm:", lease_s: float = 30.0,
                 wait_s: float = 30.0, poll_s: float = 0.05) -> None:
        self.prefix = prefix
        self.lease_s = lease_s
        self.wait_s = wait_s
        self.poll_s = poll_s
        self._where = redact(url) if url else None
        self._client = (redis.Redis.from_url(url, socket_connect_timeout=1.0, socket_timeout=1.0)
                        if url else None)

    @classmethod
    def from_settings(cls, settings: Settings) -> Locks:
        url = settings.redis_url.get_secret_value() if settings.redis_url is not None else None
        return cls(url, prefix=settings.redis_prefix)

    @contextmanager
    def hold(self, name: str, *, what: str | None = None) -> Iterator[None]:
        """Hold lock ``name`` for the block (``what``: the operation, for the 409)."""
        held = self._acquire(name, what)
        try:
            yield
        finally:
            self._release(held)

    @asynccontextmanager
    async def hold_async(self, name: str, *, what: str | None = None) -> AsyncIterator[None]:
        """``hold`` for a coroutine: waiting and releasing run off the event loop."""
        held = await asyncio.to_thread(self._acquire, name, what)
        try:
            yield
        finally:
            await asyncio.to_thread(self._release, held)

    def take(self, name: str, *, lease_s: float | None = None,
             renew_for_s: float | None = None) -> Lease | None:
        """Lock ``name`` if nobody holds it, without waiting: its ``Lease``, or None when
        someone else holds it. Without Redis, or while it is away, a ``Lease`` of nothing.
        ``renew_for_s``: renewed for at most this long, so a holder that never releases
        (a bug) frees it all the same."""
        client = self._client
        if client is None:
            return Lease(None)
        key, token = f"{self.prefix}lock:{name}", secrets.token_hex(16)
        lease_ms = int((lease_s or self.lease_s) * 1000)
        try:
            if not client.set(key, token, nx=True, px=lease_ms):
                return None
        except DOWN_ERRORS as exc:
            self._down(name, exc)
            return Lease(None)
        return Lease(self._hold(client, key, token, lease_ms, renew_for_s))

    def held(self, name: str) -> bool:
        """Whether someone holds lock ``name`` (False without Redis, or while it is away)."""
        client = self._client
        if client is None:
            return False
        try:
            return bool(client.exists(f"{self.prefix}lock:{name}"))
        except DOWN_ERRORS:
            return False

    def _acquire(self, name: str, what: str | None) -> _Held | None:
        client = self._client
        if client is None:
            return None
        key, token = f"{self.prefix}lock:{name}", secrets.token_hex(16)
        lease_ms = int(self.lease_s * 1000)
        deadline = time.monotonic() + self.wait_s
        try:
            while not client.set(key, token, nx=True, px=lease_ms):
                if time.monotonic() >= deadline:
                    raise LockBusyError(f"{what or name} is already under way elsewhere (lock "
                                        f"held for more than {self.wait_s:g} s); try again "
                                        "when it has finished")
                time.sleep(self.poll_s)
        except DOWN_ERRORS as exc:  # Redis away: the local guard still holds on this host
            self._down(name, exc)
            return None
        return self._hold(client, key, token, lease_ms)

    def _down(self, name: str, exc: BaseException) -> None:
        log.warning("lock not taken: redis unreachable", extra={
            "lock": name, "redis": self._where, "reason": " ".join(str(exc).split())[:200]})

    def _hold(self, client: redis.Redis, key: str, token: str, lease_ms: int,
              renew_for_s: float | None = None) -> _Held:
        stop = threading.Event()
        until = None if renew_for_s is None else time.monotonic() + renew_for_s
        renew = threading.Thread(target=self._renew,
                                 args=(client, key, token, lease_ms, stop, until),
                                 name="autoglm-lock", daemon=True)
        renew.start()
        return _Held(client, key, token, stop, renew)

    @staticmethod
    def _release(held: _Held | None) -> None:
        if held is None:
            return
        held.stop.set()
        held.renew.join()
        try:
            held.client.eval(_RELEASE, 1, held.key, held.token)
        except DOWN_ERRORS:
            pass  # the lease ends it

    @staticmethod
    def _renew(client: redis.Redis, key: str, token: str, lease_ms: int,
               stop: threading.Event, until: float | None = None) -> None:
        while not stop.wait(lease_ms / 3000):
            if until is not None and time.monotonic() >= until:
                return  # renewed long enough: the lease runs out by itself
            try:
                if not client.eval(_RENEW, 1, key, token, lease_ms):
                    log.warning("lock lost before it was released", extra={"lock": key})
                    return
            except DOWN_ERRORS:
                continue  # try again; the lease may still be running

    def close(self) -> None:
        if self._client is not None:
            self._client.close()
