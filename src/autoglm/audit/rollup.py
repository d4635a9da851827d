"""Usage from the same records: the ``usage_rollup`` table, kept in the chain's transaction.

Every inference record the audit log commits is also counted, per hour and per day, under
(tenant, project, key id, model): requests, errors (status >= 500 or decision error),
denials (refused with a 4xx; a request the client cancelled, 499, is neither), prompt and
completion tokens, and its latency in a fixed log-spaced histogram (``BOUNDS_MS``). A
folded record (``count`` n) counts n times.

``aggregate`` sums a batch in memory (before the chain's lock is taken); ``upsert`` then
writes one ``INSERT ... ON CONFLICT DO UPDATE`` per (bucket, period, key) that adds the
batch to the row, histogram included (a SQL function on SQLite, JSON in SQL on
PostgreSQL). It runs inside the transaction that inserts the records and moves the
chain's head: records and usage commit together or not at all, so a crash cannot make
them disagree, and a retried commit that did go through is not counted twice (the writer
recognises it and writes nothing). Appends are serialised by the head's lock, but the
upsert adds in SQL, so it would stay right without it.

Percentiles are read from the histogram: the bin holding the rank, interpolated
geometrically inside it and capped at the largest latency seen; with bins 2^(1/4) wide
an estimate is within about 19% of the true value.
"""

from __future__ import annotations

import bisect
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import orjson
from sqlalchemy import Connection
from sqlalchemy.orm import Session

ACTION = "inference"  # the records counted
BUCKETS = ("hour", "day")
# bin i counts latencies in (BOUNDS_MS[i-1], BOUNDS_MS[i]]; bin 0 those <= 0.1 ms; the last
# bin (len(BOUNDS_MS)) those above the last bound (about 23.5 minutes)
BOUNDS_MS: tuple[float, ...] = tuple(0.1 * 2 ** (i / 4) for i in range(96))
NBINS = len(BOUNDS_MS) + 1

Key = tuple[str, datetime, str, str, str, str]  # bucket, period start, tenant, project, key, model
KEY_COLUMNS = ("bucket", "period_start", "tenant_id", "project_id", "key_id", "model")
SUM_COLUMNS = ("requests", "errors", "denials", "prompt_tokens", "completion_tokens",
               "latency_sum_ms")
COLUMNS = (*KEY_COLUMNS, *SUM_COLUMNS, "latency_max_ms", "latency_hist")
SQLITE_HIST_ADD = "autoglm_hist_add"


@dataclass(slots=True)
class Usage:
    """The sums of one row: what a batch adds, or what a row holds."""

    requests: int = 0
    errors: int = 0
    denials: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    latency_sum_ms: float = 0.0
    latency_max_ms: float = 0.0
    hist: list[int] = field(default_factory=lambda: [0] * NBINS)

    def add(self, row: Mapping[str, Any]) -> None:
        """One normalised audit record (``record.normalise``)."""
        n = row["count"]
        self.requests += n
        status = row["status"]
        if row["decision"] == "error" or (status is not None and status >= 500):
            self.errors += n
        elif status is not None and 400 <= status < 500 and status != 499:
            self.denials += n
        self.prompt_tokens += (row["prompt_tokens"] or 0) * n
        self.completion_tokens += (row["completion_tokens"] or 0) * n
        latency = row["latency_ms"]
        if latency is not None and latency >= 0:
            self.latency_sum_ms += latency * n
            self.latency_max_ms = max(self.latency_max_ms, latency)
            self.hist[bisect.bisect_left(BOUNDS_MS, latency)] += n

    def merge(self, other: Usage) -> None:
        self.requests += other.requests
        self.errors += other.errors
        self.denials += other.denials
        self.prompt_tokens += other.prompt_tokens
        self.completion_tokens += other.completion_tokens
        self.latency_sum_ms += other.latency_sum_ms
        self.latency_max_ms = max(self.latency_max_ms, other.latency_max_ms)
        self.hist = hist_add(self.hist, other.hist)


def hist_add(a: Sequence[int], b: Sequence[int]) -> list[int]:
    """Two histograms added bin by bin (either may be shorter: missing bins are 0)."""
    if len(a) < len(b):
        a, b = b, a
    out = list(a)
    for i, v in enumerate(b):
        out[i] += v
    return out


def trimmed(hist: Sequence[int]) -> list[int]:
    """Without trailing empty bins (what is stored)."""
    end = len(hist)
    while end and not hist[end - 1]:
        end -= 1
    return list(hist[:end])


def percentile(hist: Sequence[int], q: float, max_ms: float) -> float | None:
    """The ``q`` quantile (0 < q <= 1) of the latencies counted in ``hist``; None if none."""
    total = sum(hist)
    if total <= 0:
        return None
    rank = q * total
    seen = 0
    for i, n in enumerate(hist):
        if n <= 0:
            continue
        if seen + n >= rank:
            upper = BOUNDS_MS[i] if i < len(BOUNDS_MS) else max(max_ms, BOUNDS_MS[-1])
            lower = BOUNDS_MS[i - 1] if i > 0 else BOUNDS_MS[0] / 2
            frac = min(1.0, max(0.0, (rank - seen) / n))
            value = lower * (upper / lower) ** frac
            return round(min(value, max_ms) if max_ms > 0 else value, 3)
        seen += n
    return round(max_ms, 3)


def aggregate(rows: Iterable[Mapping[str, Any]]) -> dict[Key, Usage]:
    """The inference records of a batch summed per hour and per day and key."""
    hours: dict[tuple[int, int, int, int, str, str, str, str], Usage] = {}
    for row in rows:
        if row["action"] != ACTION:
            continue
        ts = row["ts"]  # UTC (normalised); its fields are cheaper than replace()
        k = (ts.year, ts.month, ts.day, ts.hour, row["tenant_id"] or "",
             row["project_id"] or "", row["key_id"] or "", row["model"] or "")
        usage = hours.get(k)
        if usage is None:
            usage = hours[k] = Usage()
        usage.add(row)
    out: dict[Key, Usage] = {}
    for (year, month, day_, hour_, tenant, project, key, model), usage in hours.items():
        hour = datetime(year, month, day_, hour_, tzinfo=UTC)
        out[("hour", hour, tenant, project, key, model)] = usage
        day_key: Key = ("day", hour.replace(hour=0), tenant, project, key, model)
        day = out.get(day_key)
        if day is None:
            day = out[day_key] = Usage()
        day.merge(usage)
    return out


# --- writing, in the chain's transaction ---------------------------------------------------
_SET = ", ".join([*(f"{c} = usage_rollup.{c} + excluded.{c}" for c in SUM_COLUMNS)])
_CONFLICT = f"ON CONFLICT ({', '.join(KEY_COLUMNS)}) DO UPDATE SET {_SET}"
_UPSERT_SQLITE = (
    f"INSERT INTO usage_rollup ({', '.join(COLUMNS)}) "
    f"VALUES ({', '.join('?' * len(COLUMNS))}) {_CONFLICT}, "
    "latency_max_ms = max(usage_rollup.latency_max_ms, excluded.latency_max_ms), "
    f"latency_hist = {SQLITE_HIST_ADD}(usage_rollup.latency_hist, excluded.latency_hist)")
_UPSERT_PG = (
    f"INSERT INTO usage_rollup ({', '.join(COLUMNS)}) "
    f"VALUES ({', '.join(['%s'] * (len(COLUMNS) - 1))}, CAST(%s AS json)) {_CONFLICT}, "
    "latency_max_ms = GREATEST(usage_rollup.latency_max_ms, excluded.latency_max_ms), "
    # bin by bin: the two arrays joined on their positions (a missing bin is 0)
    "latency_hist = (SELECT COALESCE(json_agg(COALESCE(o.v::bigint, 0) + COALESCE(n.v::bigint, 0)"
    " ORDER BY COALESCE(o.i, n.i)), '[]'::json)"
    " FROM json_array_elements_text(usage_rollup.latency_hist) WITH ORDINALITY AS o(v, i)"
    " FULL JOIN json_array_elements_text(excluded.latency_hist) WITH ORDINALITY AS n(v, i)"
    " ON o.i = n.i)")


def _sqlite_hist_add(a: str | None, b: str | None) -> str:
    return orjson.dumps(hist_add(orjson.loads(a or "[]"), orjson.loads(b or "[]"))).decode()


def upsert(conn: Connection | Session, usage: Mapping[Key, Usage]) -> None:
    """Add ``usage`` to its rows, in the transaction ``conn`` holds (one statement per row,
    run as one executemany)."""
    if not usage:
        return
    connection = conn.connection() if isinstance(conn, Session) else conn
    write(connection.connection, connection.dialect.name == "sqlite", usage)


def write(dbapi: Any, sqlite: bool, usage: Mapping[Key, Usage]) -> None:
    """``upsert`` on a pooled driver connection (``dbapi``: the pool's proxy, whose
    ``info`` lasts as long as the connection: the SQLite function is registered once per
    connection, not once per commit)."""
    if not usage:
        return
    params = []
    for (bucket, period, *ids), u in usage.items():
        when: Any = period.replace(tzinfo=None).isoformat(" ", "microseconds") if sqlite \
            else period  # the text SQLAlchemy's SQLite DateTime reads back
        params.append((bucket, when, *ids, u.requests, u.errors, u.denials, u.prompt_tokens,
                       u.completion_tokens, u.latency_sum_ms, u.latency_max_ms,
                       orjson.dumps(trimmed(u.hist)).decode()))
    if sqlite and not dbapi.info.get(SQLITE_HIST_ADD):
        dbapi.dbapi_connection.create_function(SQLITE_HIST_ADD, 2, _sqlite_hist_add,
                                               deterministic=True)
        dbapi.info[SQLITE_HIST_ADD] = True
    cursor = dbapi.cursor()
    try:
        cursor.executemany(_UPSERT_SQLITE if sqlite else _UPSERT_PG, params)
    finally:
        cursor.close()


def apply(conn: Connection | Session, rows: Iterable[Mapping[str, Any]]) -> None:
    """``aggregate`` then ``upsert``: for callers that have not summed the batch yet."""
    upsert(conn, aggregate(rows))
