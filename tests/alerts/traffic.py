"""Synthetic traffic for the detector: a week of diurnal load per key, seeded.

Each key has a base rate (requests per minute at its busiest) and a daily profile:
``office`` (weekdays: night at 8%, a ramp from 07:00 to 09:30, a lunch dip, a fall from
17:00 to 20:00; weekends at 15%), ``smooth`` (a sinusoid between 20% and 100%, peak at
15:00) or ``nightly`` (smooth, plus a job that runs at 02:00 every night for 40 minutes at
three times the base rate). Counts per minute are Poisson, or with ``bursty`` overdispersed
(Poisson of the rate times a Gamma(4, 1/4) factor: people work in sessions), tokens are Gamma(2, 300) per request
(mean 600), 1% of requests fail (5xx) and 0.5% are refused. Each key is used from its two
usual addresses.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np

from autoglm.alerts.detector import Subject, Tally

DAY_MIN = 1440
MONDAY = 4 * 86_400.0  # 1970-01-05 00:00 UTC was a Monday: the week starts there


@dataclass(frozen=True)
class Key:
    key_id: str
    tenant_id: str
    base: float  # requests per minute at the busiest
    profile: str  # office | smooth | nightly


KEYS = (
    Key("key_office_small", "ten_a", 2.0, "office"),
    Key("key_office_mid", "ten_a", 15.0, "office"),
    Key("key_office_big", "ten_a", 60.0, "office"),
    Key("key_smooth_small", "ten_b", 1.0, "smooth"),
    Key("key_smooth_mid", "ten_b", 8.0, "smooth"),
    Key("key_smooth_big", "ten_b", 40.0, "smooth"),
    Key("key_nightly", "ten_b", 10.0, "nightly"),
    Key("key_sparse", "ten_a", 0.2, "smooth"),
)


def _ramp(x: float, start: float, end: float) -> float:
    return min(1.0, max(0.0, (x - start) / (end - start)))


def profile(kind: str, minute: int) -> float:
    """The share of the base rate at ``minute`` of the week (0 = Monday 00:00)."""
    day, m = divmod(minute % (7 * DAY_MIN), DAY_MIN)
    hour = m / 60
    if kind == "office":
        if day >= 5:
            return 0.15
        up = _ramp(hour, 7.0, 9.5)
        down = 1 - _ramp(hour, 17.0, 20.0)
        lunch = 0.7 if 12.0 <= hour < 13.0 else 1.0
        return 0.08 + 0.92 * min(up, down) * lunch
    smooth = 0.6 + 0.4 * math.sin(2 * math.pi * (hour - 9.0) / 24)
    if kind == "nightly" and 2.0 <= hour < 2 + 40 / 60:
        return smooth + 3.0
    return smooth


class Traffic:
    """Tallies per minute, with anomalies added where asked."""

    def __init__(self, seed: int, keys: tuple[Key, ...] = KEYS, bursty: bool = True) -> None:
        self.rng = np.random.default_rng(seed)
        self.keys = keys
        self.bursty = bursty
        # (key id, first minute, minutes, extra requests per minute as a factor of the
        # key's current rate, from a new address?, refusals per minute, errors per minute)
        self.bursts: list[tuple[str, int, int, float, bool, int, int]] = []

    def burst(self, key_id: str, start: int, minutes: int, factor: float = 10.0,
              new_address: bool = True) -> None:
        """Extra requests at ``factor`` times the key's rate (a leaked key)."""
        self.bursts.append((key_id, start, minutes, factor, new_address, 0, 0))

    def refusals(self, key_id: str, start: int, minutes: int, per_minute: int) -> None:
        """Extra refused requests (probing)."""
        self.bursts.append((key_id, start, minutes, 0.0, False, per_minute, 0))

    def errors(self, key_id: str, start: int, minutes: int, per_minute: int) -> None:
        """Extra failed requests."""
        self.bursts.append((key_id, start, minutes, 0.0, False, 0, per_minute))

    def rate(self, key: Key, minute: int) -> float:
        return key.base * profile(key.profile, minute)

    def minutes(self, count: int) -> Iterator[tuple[int, dict[Subject, Tally]]]:
        """(bucket number, tallies) for ``count`` minutes from Monday 00:00."""
        first = int(MONDAY // 60)
        for minute in range(count):
            tallies: dict[Subject, Tally] = {}
            for key in self.keys:
                self._add(tallies, key, minute)
            yield first + minute, tallies

    def _add(self, tallies: dict[Subject, Tally], key: Key, minute: int) -> None:
        rng = self.rng
        lam = self.rate(key, minute)
        n = int(rng.poisson(lam * rng.gamma(4.0, 0.25) if self.bursty else lam))
        addresses = {}
        if n:
            first = int(rng.binomial(n, 0.5))
            addresses = {a: c for a, c in (("10.0.0.1", first), ("10.0.0.2", n - first)) if c}
        errors = int(rng.binomial(n, 0.01)) if n else 0
        refusals = int(rng.binomial(n, 0.005)) if n else 0
        for key_id, start, length, factor, new_address, refused, failed in self.bursts:
            if key_id != key.key_id or not start <= minute < start + length:
                continue
            extra = int(rng.poisson(lam * factor)) if factor else 0
            if extra:
                where = "203.0.113.7" if new_address else "10.0.0.1"
                addresses[where] = addresses.get(where, 0) + extra
            n += extra + refused + failed
            refusals += refused
            errors += failed
        if not n:
            return
        tokens = int(rng.gamma(2.0 * n, 300.0))
        k = tallies[("key", key.key_id)] = Tally(
            requests=n, tokens=tokens, errors=errors, refusals=refusals,
            tenant_id=key.tenant_id, principal_id="prn_" + key.key_id[4:],
            addresses=addresses)
        t = tallies.setdefault(("tenant", key.tenant_id), Tally())
        t.requests += k.requests
        t.tokens += k.tokens
        t.errors += k.errors
        t.refusals += k.refusals
