"""Failed authentication, counted per client address.

Beyond ``limit`` failures from one address within ``window_s``, that address gets 429 with
Retry-After until the window ends, before its key is even looked at, so guessing keys costs
the guesser time, not us database queries. Failures are logged once per address and window
with their count, never one line per attempt. Memory is bounded: the oldest addresses are
forgotten first.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

from autoglm.errors import RateLimitError

log = logging.getLogger("autoglm.auth")

MAX_ADDRESSES = 10_000


class AuthFailures:
    def __init__(self, limit: int = 20, window_s: float = 10.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.limit = limit
        self.window_s = window_s
        self.clock = clock
        self._seen: dict[str, list[float]] = {}  # address -> [window start, failures]

    def check(self, address: str | None) -> None:
        """Refuse an address that failed too often in its current window."""
        if address is None:
            return
        entry = self._seen.get(address)
        if entry is None or entry[1] < self.limit:
            return
        left = entry[0] + self.window_s - self.clock()
        if left > 0:
            raise RateLimitError(
                "Too many failed authentications from your address; retry later.",
                code="too_many_auth_failures", retry_after=left)
        self._roll(address, entry)

    def failed(self, address: str | None) -> None:
        if address is None:
            return
        now = self.clock()
        entry = self._seen.get(address)
        if entry is not None and now - entry[0] >= self.window_s:
            self._roll(address, entry)
            entry = None
        if entry is None:
            if len(self._seen) >= MAX_ADDRESSES:
                oldest = next(iter(self._seen))
                self._roll(oldest, self._seen[oldest])
            entry = self._seen[address] = [now, 0]
        entry[1] += 1

    def _roll(self, address: str, entry: list[float]) -> None:
        """The window of ``address`` is over: one log line for all its failures."""
        del self._seen[address]
        count = int(entry[1])
        if count:
            log.warning("failed authentications", extra={
                "client": address, "failures": count, "window_s": self.window_s,
                "refused_from": count >= self.limit})
