"""``Meter``: counts requests and tokens per key, project and tenant in fixed windows, and
says whether one more request fits.

Counters are *buckets*: (scope, id, kind, window start), with kinds ``requests`` and
``tokens`` per ``window_s`` (a minute) and ``day`` (tokens per UTC day, tenants). A
request is charged to every bucket that applies to it, all or nothing: one request and
its reserved tokens (``max_tokens`` plus an estimate of the prompt), settled to the real
usage when it ends (``settle``).

Without Redis the counts are this process's own, exact. With Redis the budget of each
bucket is shared by every process through *leases*: a process takes a slice of a
bucket's budget from Redis (``lease_fraction`` of the limit, at least what the request
needs; one Lua script, atomic, for all of a request's buckets that are short) and decides
locally, with no round trip, while its slice lasts. Redis never hands out more than the
limit, so the sum over processes holds; at most a slice per process is left unused when
a window ends. If Redis is down, each process goes on with its own counts against the
whole limit (per-process limits) and leases again once it is back.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from autoglm.errors import QuotaExceededError, RateLimitError
from autoglm.limits.book import LimitBook
from autoglm.state.redis import RedisDown, RedisLink

log = logging.getLogger("autoglm.limits")
DAY_S = 86_400.0
BUCKET_CACHE_MAX = 10_000  # (key, project, tenant) combinations whose buckets are kept

# Leases for the buckets a request is short of: KEYS are the buckets, ARGV four numbers
# per bucket (ttl ms, limit, wanted, needed). Each bucket grants what it has room for, up
# to ``wanted``, or nothing if that is less than ``needed``. Returns (granted, total) pairs.
_LEASE = """
local out = {}
for i = 1, #KEYS do
  local b = (i - 1) * 4
  local cur = tonumber(redis.call('GET', KEYS[i]) or '0')
  local grant = math.min(tonumber(ARGV[b + 3]), tonumber(ARGV[b + 2]) - cur)
  if grant < tonumber(ARGV[b + 4]) then
    grant = 0
  else
    cur = redis.call('INCRBY', KEYS[i], grant)
    redis.call('PEXPIRE', KEYS[i], ARGV[b + 1])
  end
  out[2 * i - 1] = grant
  out[2 * i] = cur
end
return out
"""

_LABEL = {"requests": "requests per minute", "tokens": "tokens per minute",
          "day": "tokens per day"}


@dataclass(frozen=True, slots=True)
class Bucket:
    name: str  # "<scope>:<id>:<kind>:<window start>"
    scope: str
    ident: str
    kind: str  # requests | tokens | day
    limit: int
    resets_at: float  # epoch seconds


@dataclass(slots=True)
class Decision:
    """What one request was charged, and the headers that say where its limits stand."""

    charged: list[tuple[Bucket, int]] = field(default_factory=list)
    headers: list[tuple[bytes, bytes]] = field(default_factory=list)
    reserved_tokens: int = 0


def reset_text(seconds: float) -> str:
    """A duration as OpenAI's ``x-ratelimit-reset-*`` headers write it (``20ms``,
    ``1.5s``, ``6m0s``)."""
    if seconds < 1:
        return f"{max(0, int(seconds * 1000))}ms"
    if seconds < 60:
        return f"{round(seconds, 3):g}s"
    minutes, rest = divmod(int(math.ceil(seconds)), 60)
    if minutes < 60:
        return f"{minutes}m{rest}s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes}m{rest}s"


class Meter:
    def __init__(self, book: LimitBook, *, window_s: float = 60.0,
                 link: RedisLink | None = None, lease_fraction: float = 0.02,
                 reload_s: float = 5.0, clock: Callable[[], float] = time.time) -> None:
        self.book = book
        self.window_s = window_s
        self.link = link
        self.lease_fraction = lease_fraction
        self.reload_s = reload_s
        self.clock = clock
        self._local: dict[str, int] = {}  # bucket -> used by this process in its window
        self._allow: dict[str, int] = {}  # bucket -> leased from Redis, not used yet
        self._seen: dict[str, int] = {}  # bucket -> Redis's total at our last lease
        self._expiry: dict[str, float] = {}  # bucket -> when its window ends
        self._tasks: list[asyncio.Task[None]] = []
        self._script = None
        self._bucket_cache: dict[tuple[str | None, ...], tuple[list[Bucket], float, int]] = {}

    # --- deciding ---------------------------------------------------------------------------
    def buckets(self, key_id: str | None, project: str | None, tenant: str | None,
                now: float) -> list[Bucket]:
        """The buckets a request of this key, project and tenant is charged to now (the
        same list until a window ends or the limits change)."""
        who = (key_id, project, tenant)
        hit = self._bucket_cache.get(who)
        if hit is not None and hit[1] > now and hit[2] == self.book.version:
            return hit[0]
        out = self._make_buckets(key_id, project, tenant, now)
        if len(self._bucket_cache) >= BUCKET_CACHE_MAX:
            self._bucket_cache.pop(next(iter(self._bucket_cache)))  # the oldest entry
        self._bucket_cache[who] = (out, min((b.resets_at for b in out), default=now + 1.0),
                                   self.book.version)
        return out

    def _make_buckets(self, key_id: str | None, project: str | None, tenant: str | None,
                      now: float) -> list[Bucket]:
        out: list[Bucket] = []
        for scope, ident in (("key", key_id), ("project", project), ("tenant", tenant)):
            lim = self.book.of(scope, ident)
            if lim is None:
                continue
            for kind, limit, length in (("requests", lim.requests_per_minute, self.window_s),
                                        ("tokens", lim.tokens_per_minute, self.window_s),
                                        ("day", lim.tokens_per_day if scope == "tenant"
                                         else None, DAY_S)):
                if limit:
                    start = math.floor(now / length) * length
                    out.append(Bucket(f"{scope}:{ident}:{kind}:{int(start * 1000)}", scope,
                                      ident or "", kind, limit, start + length))
        return out

    async def take(self, key_id: str | None, project: str | None, tenant: str | None,
                   tokens: int, *, share: float = 1.0) -> Decision:
        """Charge one request and ``tokens`` reserved tokens to every bucket that applies,
        or raise ``RateLimitError`` / ``QuotaExceededError`` (nothing charged).

        ``share`` < 1: a request of lower priority (a batch line) that may only use that
        share of each limit, leaving the rest to live traffic."""
        now = self.clock()
        buckets = self.buckets(key_id, project, tenant, now)
        if not buckets:
            return Decision()
        costs = [(b, 1 if b.kind == "requests" else tokens) for b in buckets]
        try:
            if share < 1.0:
                for b, cost in costs:
                    used = b.limit - self._left(b)
                    if used + cost > b.limit * share:
                        self._refuse(b, used, cost, now, share=share)
            shared = False
            if self.link is not None and self.link.available:
                short = [(b, c) for b, c in costs if self._allow.get(b.name, 0) < c]
                shared = not short or await self._lease(short, now)
            if shared:
                for b, cost in costs:
                    if self._allow.get(b.name, 0) < cost:
                        self._refuse(b, self._seen.get(b.name, 0) - self._allow.get(b.name, 0),
                                     cost, now)
                for b, cost in costs:
                    self._allow[b.name] -= cost
            else:  # this process's own counts: no Redis, or Redis is away
                for b, cost in costs:
                    used = self._local.get(b.name, 0)
                    if used + cost > b.limit:
                        self._refuse(b, used, cost, now)
            for b, cost in costs:
                self._local[b.name] = self._local.get(b.name, 0) + cost
                self._expiry[b.name] = b.resets_at
        except RateLimitError as exc:
            exc.headers = tuple(self._headers(costs, now))
            raise
        return Decision(costs, self._headers(costs, now), tokens)

    def settle(self, decision: Decision, used_tokens: int) -> None:
        """The request is over: its token buckets get the real usage instead of the
        reservation (in windows still open); what was not used is this process's to use
        again."""
        if not decision.charged:
            return
        delta = used_tokens - decision.reserved_tokens
        if delta == 0:
            return
        now = self.clock()
        for b, _ in decision.charged:
            if b.kind != "requests" and b.resets_at > now:
                self._local[b.name] = self._local.get(b.name, 0) + delta
                if b.name in self._allow:
                    self._allow[b.name] -= delta

    async def _lease(self, short: list[tuple[Bucket, int]], now: float) -> bool:
        """Lease budget for the buckets short of it; False when Redis cannot be asked."""
        link = self.link
        if link is None:
            return False
        args: list[int] = []
        for b, cost in short:
            need = cost - self._allow.get(b.name, 0)
            want = max(need, math.ceil(b.limit * self.lease_fraction))
            args += [max(1000, int((b.resets_at - now) * 1000) + 5000), b.limit, want, need]
        keys = [link.key("rl", b.name) for b, _ in short]
        if self._script is None:
            self._script = link.client.register_script(_LEASE)
        script = self._script
        try:
            out = await link.call(lambda _c: script(keys=keys, args=args))
        except RedisDown:
            return False
        for i, (b, _) in enumerate(short):
            self._allow[b.name] = self._allow.get(b.name, 0) + int(out[2 * i])
            self._seen[b.name] = int(out[2 * i + 1])
            self._expiry[b.name] = b.resets_at
        return True

    def _refuse(self, b: Bucket, used: int, cost: int, now: float,
                share: float = 1.0) -> None:
        wait = max(0.001, b.resets_at - now)
        what = _LABEL[b.kind]
        if share < 1.0:
            msg = (f"Batch work may use {share:.0%} of the {what} limit on {b.scope} {b.ident} "
                   f"({b.limit}); the rest is kept for live requests. Used {max(0, used)}; "
                   f"try again in {reset_text(wait)}.")
        elif cost > b.limit:
            msg = (f"This request needs {cost} tokens and the {what} limit of {b.scope} "
                   f"{b.ident} is {b.limit}: lower max_tokens")
        else:
            msg = (f"Rate limit reached for {what} on {b.scope} {b.ident}: limit {b.limit}, "
                   f"used {max(0, min(used, b.limit))}, requested {cost}. Please try again "
                   f"in {reset_text(wait)}.")
        cls = QuotaExceededError if b.kind == "day" else RateLimitError
        raise cls(msg, retry_after=wait)

    def _left(self, b: Bucket) -> int:
        if b.name in self._seen and self.link is not None and not self.link.down:
            return b.limit - self._seen[b.name] + self._allow.get(b.name, 0)
        return b.limit - self._local.get(b.name, 0)

    def _headers(self, costs: list[tuple[Bucket, int]], now: float) -> list[tuple[bytes, bytes]]:
        out: list[tuple[bytes, bytes]] = []
        for kind, suffix in (("requests", b"requests"), ("tokens", b"tokens")):
            tight: tuple[Bucket, int] | None = None
            for b, _ in costs:
                if b.kind == kind and (tight is None or self._left(b) < tight[1]):
                    tight = (b, self._left(b))
            if tight is not None:
                b, left = tight
                out += [(b"x-ratelimit-limit-" + suffix, str(b.limit).encode()),
                        (b"x-ratelimit-remaining-" + suffix, str(max(0, left)).encode()),
                        (b"x-ratelimit-reset-" + suffix,
                         reset_text(b.resets_at - now).encode())]
        return out

    # --- housekeeping -----------------------------------------------------------------------
    async def start(self) -> None:
        """Read the limits admins set, and keep reading them every ``reload_s`` (changes
        made by other processes), dropping the counts of windows that ended."""
        await asyncio.to_thread(self.book.reload)
        self._tasks = [asyncio.get_running_loop().create_task(self._housekeeping())]

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            try:
                await task
            except asyncio.CancelledError:
                pass
        self._tasks = []

    async def _housekeeping(self) -> None:
        while True:
            await asyncio.sleep(self.reload_s)
            try:
                self.forget_ended()
                await asyncio.to_thread(self.book.reload)
            except Exception:  # noqa: BLE001 - the loop must outlive any surprise
                log.exception("rate limit housekeeping failed")

    def forget_ended(self) -> None:
        now = self.clock()
        for name in [n for n, end in self._expiry.items() if end <= now]:
            for d in (self._expiry, self._local, self._allow, self._seen):
                d.pop(name, None)
