"""The usage anomaly detector: pure, and told the time (which bucket ended) by its caller.

Time is cut into buckets of ``bucket_s`` (a minute), numbered from the epoch. A *subject*
is an API key or a tenant; for each, the feed counts per bucket its requests, tokens
(prompt and completion), errors (5xx) and refusals (4xx but 499), and for a key the
requests per client address. When a bucket ends, ``observe`` compares each count ``x``
of a subject seen in it with that subject's own history:

- from its last ``window`` buckets (idle ones count as 0): the *level* ``L`` (median),
  the *spread* ``s = max(1.4826 * MAD, sqrt(max(L, 1)))`` (MAD: the median absolute
  deviation, floored at the Poisson spread of the level) and the 90th percentile ``q90``;
- its *seasonal peak*: the median, over the last 7 days, of its highest bucket in this
  hour of the day, or in the next hour if that is higher (a nightly job, or a morning
  ramp, that happened on the days before is expected today; hours before it was first
  seen are left out, so there is none on its first day); the *usual peak* ``P`` is the
  larger of ``q90`` and the seasonal peak;
- it alerts when ``x >= max(L + k*s, ratio*P, floor)``, ``floor`` being ``min_count``
  (``min_tokens`` for tokens), once the subject is past its warm-up (``warmup_s`` after
  it was first seen), and at most once per subject and signal per ``cooldown_s``.

So a count must be both far out of the recent spread and several times the busiest
the subject usually is at that time: bursty clients (sessions of requests) and daily
patterns stay quiet, a leaked key used at ten times its rate does not (measured in
``tests/alerts/test_detector.py``). A count over its threshold goes into the history as
the threshold, so a burst is alerted once and, if it goes on, becomes the new normal
after about a tenth of the window instead of raising the threshold by itself at once.

*New address* (keys only): an address the key first used at least ``warmup_s`` after its
own first use, within the last ``NEW_FOR_BUCKETS`` buckets, is new; the requests from new
addresses in a bucket alert (signal ``new_address``) when they alone pass the requests
threshold: a leaked key used from somewhere else at several times its usual rate.
Addresses are forgotten ``ADDRESS_MEMORY_S`` after their last use, at most
``MAX_ADDRESSES`` per key (the least recently used go first).

Memory is bounded: ``max_subjects`` subjects (the least recently active go first, and
start over, warm-up included, if they come back), each with its ``window`` counts and
a week of hourly peaks per signal (about 6 KB in all with the default window).
"""

from __future__ import annotations

import math
from array import array
from collections import OrderedDict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from statistics import median

from autoglm.alerts.alert import Alert

COUNTED = ("requests", "tokens", "errors", "refusals")
MAD_SCALE = 1.4826  # MAD * this estimates the standard deviation of normal data
SLOT_S = 3600.0  # the seasonal peak's unit: an hour of the day
DAY_SLOTS = 24
SEASON_DAYS = 7
RING = SEASON_DAYS * DAY_SLOTS + 1  # hours kept: this one and a week before it
NEW_FOR_BUCKETS = 5
ADDRESS_MEMORY_S = SEASON_DAYS * 86_400.0
MAX_ADDRESSES = 256
SHOWN_ADDRESSES = 5

Subject = tuple[str, str]  # (scope, id): ("key", "key_0a1b..."), ("tenant", "ten_...")


@dataclass(frozen=True)
class Rule:
    bucket_s: float = 60.0
    window: int = 60  # buckets of the recent baseline
    warmup_s: float = 86_400.0
    cooldown_s: float = 3600.0
    k: float = 6.0
    ratio: float = 2.5
    min_count: int = 20  # requests, errors, refusals per bucket, at least
    min_tokens: int = 100_000  # tokens per bucket, at least
    max_subjects: int = 10_000

    def floor(self, signal: str) -> int:
        return self.min_tokens if signal == "tokens" else self.min_count

    def text(self, signal: str) -> str:
        return (f"value >= max(level + {self.k:g}*spread, {self.ratio:g}*peak, "
                f"{self.floor(signal)}) per {self.bucket_s:g} s")

    def buckets(self, seconds: float) -> int:
        return max(0, math.ceil(seconds / self.bucket_s - 1e-9))


@dataclass(slots=True)
class Tally:
    """One subject's counts in one bucket (the feed adds to it)."""

    requests: int = 0
    tokens: int = 0
    errors: int = 0
    refusals: int = 0
    tenant_id: str | None = None
    principal_id: str | None = None
    addresses: dict[str, int] | None = None  # keys: requests per client address


@dataclass(slots=True)
class Verdict:
    alerts: list[Alert] = field(default_factory=list)
    # (scope, signal) -> subjects over their threshold in this bucket (cooled down or not)
    active: dict[tuple[str, str], int] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Baseline:
    level: float
    spread: float
    peak: float
    threshold: float


class _History:
    """What the detector keeps of one subject: its last ``window`` counts per signal (rings
    that move together), its hourly peaks, when it last alerted, its addresses."""

    __slots__ = ("first", "last", "recent", "pos", "filled", "slots", "slot_ids", "alerted",
                 "addresses")

    def __init__(self, bucket: int, window: int) -> None:
        self.first = bucket
        self.last = bucket - 1
        self.recent = {s: array("q", bytes(8 * window)) for s in COUNTED}
        self.pos = 0  # the ring cell the next bucket's counts go to
        self.filled = 0  # buckets held, up to the window
        self.slots = {s: array("f", bytes(4 * RING)) for s in COUNTED}  # hourly peaks
        self.slot_ids = array("i", [-1]) * RING  # which hour each cell holds
        self.alerted: dict[str, int] = {}  # signal -> bucket of its last alert
        self.addresses: dict[str, list[int]] = {}  # address -> [first, last] bucket seen

    def window(self, signal: str) -> array:
        ring = self.recent[signal]
        return ring if self.filled == len(ring) else ring[:self.filled]

    def advance(self) -> None:
        size = len(self.recent["requests"])
        self.pos = (self.pos + 1) % size
        self.filled = min(self.filled + 1, size)


class Detector:
    def __init__(self, rule: Rule) -> None:
        self.rule = rule
        self._warmup = rule.buckets(rule.warmup_s)
        self._cooldown = max(1, rule.buckets(rule.cooldown_s))
        self._address_memory = rule.buckets(ADDRESS_MEMORY_S)
        self._subjects: OrderedDict[Subject, _History] = OrderedDict()

    def __len__(self) -> int:
        return len(self._subjects)

    def bucket_of(self, t: float) -> int:
        return math.floor(t / self.rule.bucket_s)

    def observe(self, bucket: int, tallies: Mapping[Subject, Tally]) -> Verdict:
        """Bucket ``bucket`` ended with these counts (subjects not in ``tallies`` were idle):
        the alerts it raises."""
        verdict = Verdict()
        for subject, tally in tallies.items():
            h = self._history(subject, bucket)
            mature = bucket - h.first >= self._warmup
            requests_baseline = None
            for signal in COUNTED:
                x = getattr(tally, signal)
                base = self._check(verdict, subject, tally, h, bucket, signal, x, mature)
                if signal == "requests":
                    requests_baseline = base
                kept = x if base is None or not mature or x < base.threshold \
                    else base.threshold  # a burst enters the history as its threshold
                self._remember(h, bucket, signal, int(kept))
            if tally.addresses:
                self._addresses(verdict, subject, tally, h, bucket, mature, requests_baseline)
            h.advance()
            h.last = bucket
        return verdict

    # --- the rule ---------------------------------------------------------------------------
    def baseline(self, h: _History, bucket: int, signal: str) -> Baseline:
        """The subject's level, spread, usual peak and threshold for ``signal``."""
        rule = self.rule
        recent = sorted(h.window(signal))
        level = spread = peak = 0.0
        if recent:
            level = _mid(recent)
            spread = MAD_SCALE * _mid(sorted(abs(v - level) for v in recent))
            peak = float(recent[math.ceil(0.9 * len(recent)) - 1])
        seasonal = self._seasonal(h, bucket, signal)
        if seasonal is not None:
            peak = max(peak, seasonal)
        spread = max(spread, math.sqrt(max(level, 1.0)))
        threshold = max(level + rule.k * spread, rule.ratio * peak, float(rule.floor(signal)))
        return Baseline(level, spread, peak, threshold)

    def _check(self, verdict: Verdict, subject: Subject, tally: Tally, h: _History,
               bucket: int, signal: str, x: int, mature: bool) -> Baseline | None:
        if x < self.rule.floor(signal):  # cannot alert: no baseline needed
            return None
        base = self.baseline(h, bucket, signal)
        if x < base.threshold or not mature:
            return base
        scope = subject[0]
        verdict.active[(scope, signal)] = verdict.active.get((scope, signal), 0) + 1
        last = h.alerted.get(signal)
        if last is None or bucket - last >= self._cooldown:
            h.alerted[signal] = bucket
            verdict.alerts.append(self._alert(subject, tally, bucket, signal, float(x), base))
        return base

    def _addresses(self, verdict: Verdict, subject: Subject, tally: Tally, h: _History,
                   bucket: int, mature: bool, base: Baseline | None) -> None:
        new_since = h.first + self._warmup  # the key's first addresses are its usual ones
        fresh: list[tuple[int, str]] = []
        new_requests = 0
        for addr, n in (tally.addresses or {}).items():
            seen = h.addresses.get(addr)
            if seen is None or bucket - seen[1] > self._address_memory:
                seen = h.addresses[addr] = [bucket, bucket]
            else:
                seen[1] = bucket
            if seen[0] >= new_since and bucket - seen[0] < NEW_FOR_BUCKETS:
                new_requests += n
                fresh.append((n, addr))
        if len(h.addresses) > MAX_ADDRESSES:
            _forget_addresses(h)
        if not mature or new_requests < self.rule.min_count:
            return
        if base is None:
            base = self.baseline(h, bucket, "requests")
        if new_requests < base.threshold:
            return
        scope = subject[0]
        verdict.active[(scope, "new_address")] = verdict.active.get((scope, "new_address"),
                                                                    0) + 1
        last = h.alerted.get("new_address")
        if last is not None and bucket - last < self._cooldown:
            return
        h.alerted["new_address"] = bucket
        shown = tuple(a for _, a in sorted(fresh, reverse=True)[:SHOWN_ADDRESSES])
        verdict.alerts.append(self._alert(subject, tally, bucket, "new_address",
                                          float(new_requests), base, shown))

    def _alert(self, subject: Subject, tally: Tally, bucket: int, signal: str, x: float,
               base: Baseline, addresses: tuple[str, ...] = ()) -> Alert:
        scope, ident = subject
        rule = self.rule
        text = rule.text("requests" if signal == "new_address" else signal)
        if signal == "new_address":
            text = "requests from new addresses: " + text
        return Alert(scope=scope, subject=ident, signal=signal, value=x,
                     baseline=base.level, threshold=base.threshold, spread=base.spread,
                     peak=base.peak,
                     rule=text, at=(bucket + 1) * rule.bucket_s, bucket_s=rule.bucket_s,
                     tenant_id=tally.tenant_id if scope == "key" else ident,
                     key_id=ident if scope == "key" else None,
                     principal_id=tally.principal_id, addresses=addresses)

    # --- history ----------------------------------------------------------------------------
    def _history(self, subject: Subject, bucket: int) -> _History:
        h = self._subjects.get(subject)
        if h is None:
            h = self._subjects[subject] = _History(bucket, self.rule.window)
            while len(self._subjects) > self.rule.max_subjects:
                self._subjects.popitem(last=False)  # the least recently active
            return h
        self._subjects.move_to_end(subject)
        for _ in range(min(bucket - h.last - 1, self.rule.window)):  # idle buckets: 0
            for signal in COUNTED:
                h.recent[signal][h.pos] = 0
            h.advance()
        return h

    def _remember(self, h: _History, bucket: int, signal: str, value: int) -> None:
        """``value`` into the ring cell of this bucket (``advance`` moves on) and the peak
        of its hour."""
        h.recent[signal][h.pos] = value
        if not value:
            return
        slot = int(bucket * self.rule.bucket_s // SLOT_S)
        cell = slot % RING
        if h.slot_ids[cell] != slot:  # an older hour's cell: start it over
            h.slot_ids[cell] = slot
            for peaks in h.slots.values():
                peaks[cell] = 0.0
        peaks = h.slots[signal]
        peaks[cell] = max(peaks[cell], value)

    def _seasonal(self, h: _History, bucket: int, signal: str) -> float | None:
        """Median over the past days of the highest bucket in this hour, or the next."""
        slot = int(bucket * self.rule.bucket_s // SLOT_S)
        first_full = math.ceil(h.first * self.rule.bucket_s / SLOT_S - 1e-9)
        peaks = h.slots[signal]
        best: float | None = None
        for ahead in (0, 1):
            days: list[float] = []
            for d in range(1, SEASON_DAYS + 1):
                past = slot + ahead - d * DAY_SLOTS
                if past < first_full:
                    break
                cell = past % RING
                days.append(peaks[cell] if h.slot_ids[cell] == past else 0.0)
            if days:
                m = median(days)
                best = m if best is None else max(best, m)
        return best

    def subjects(self) -> Iterable[Subject]:
        return iter(self._subjects)


def _mid(ordered: list[float]) -> float:
    """The median of a sorted, non-empty list."""
    n = len(ordered)
    half = n // 2
    return float(ordered[half]) if n % 2 else (ordered[half - 1] + ordered[half]) / 2


def _forget_addresses(h: _History) -> None:
    """Down to ``MAX_ADDRESSES``, the least recently used first."""
    by_use = sorted(h.addresses.items(), key=lambda kv: kv[1][1])
    for addr, _ in by_use[:len(by_use) - MAX_ADDRESSES]:
        del h.addresses[addr]
