"""Reading the audit log: filters, the seq range of a time window, keyset pages.

Records are read in seq order (the chain's order). A record's time is when it was made,
before it was sealed, so times are only *nearly* in seq order: a record that waited in
the queue may follow one made after it. A time window is therefore turned into the seq
range that holds the matching records (``window``: their lowest and highest seq, one
range scan of the ``(ts, seq)`` index or of a filter's own, whichever is narrower), and a
page is read by seq inside that range with the exact tests on top. Without it a page of
"since an hour ago" walked the primary key from seq 1 (the planner assumes matches are
spread evenly), and the last page of an old window walked to the end of the table.

Indexes (migration 0006): ``(ts, seq)``, ``(tenant_id, seq)``, ``(actor, seq)``,
``(action, seq)``, ``(decision, seq)``: each filter reads only its own records, in seq
order, from ``after`` on.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, date, datetime
from typing import Any

from sqlalchemy import Connection, Select, func, select

from autoglm.audit.record import DECISIONS
from autoglm.errors import InvalidRequestError
from autoglm.store.models import AuditRecord, valid_id

T = AuditRecord.__table__
FILTERS = ("since", "until", "tenant", "actor", "action", "decision")
_DATE = re.compile(r"^\d{4}-\d{2}-\d{2}$")
_RFC3339 = re.compile(
    r"^\d{4}-\d{2}-\d{2}[Tt ]\d{2}:\d{2}:\d{2}(\.\d{1,9})?([Zz]|[+-]\d{2}:\d{2})$")
_TEXT_MAX = {"actor": 64, "action": 64}


def parse_time(value: str, param: str, *, date_ok: bool = False) -> datetime:
    """An RFC 3339 time with its offset (``2026-03-01T08:00:00Z``), in UTC; with
    ``date_ok`` also a date (``2026-03-01``: its midnight, UTC). A 400 naming ``param``
    otherwise."""
    text = value.strip()
    if date_ok and _DATE.match(text):
        try:
            day = date.fromisoformat(text)
        except ValueError:
            day = None
        if day is not None:
            return datetime(day.year, day.month, day.day, tzinfo=UTC)
    if _RFC3339.match(text):
        # Python takes at most 6 decimals of a second
        text = re.sub(r"(\.\d{6})\d+", r"\1", text.replace("z", "Z"))
        try:
            return datetime.fromisoformat(text).astimezone(UTC)
        except (ValueError, OverflowError):
            pass
    shape = "an RFC 3339 time with its offset, such as 2026-03-01T08:00:00Z"
    if date_ok:
        shape += ", or a date (2026-03-01, midnight UTC)"
    raise InvalidRequestError(f"{param} must be {shape}; got {value[:40]!r}", param=param)


@dataclass(frozen=True)
class Filters:
    since: datetime | None = None  # ts >= since
    until: datetime | None = None  # ts < until
    tenant: str | None = None
    actor: str | None = None
    action: str | None = None
    decision: str | None = None

    @classmethod
    def parse(cls, params: Any) -> Filters:
        """From query parameters (a mapping of str); a 400 naming the bad one."""
        got: dict[str, Any] = {}
        for name in ("since", "until"):
            if params.get(name) is not None:
                got[name] = parse_time(params[name], name)
        if "since" in got and "until" in got and got["until"] <= got["since"]:
            raise InvalidRequestError("until must be later than since", param="until")
        tenant = params.get("tenant")
        if tenant is not None:
            if not valid_id(tenant) or not tenant.startswith("ten_"):
                raise InvalidRequestError("tenant must be a tenant id (ten_...)", param="tenant")
            got["tenant"] = tenant
        for name, limit in _TEXT_MAX.items():
            value = params.get(name)
            if value is not None:
                if not value or len(value) > limit or not value.isprintable():
                    raise InvalidRequestError(f"{name} must be 1 to {limit} printable "
                                              "characters", param=name)
                got[name] = value
        decision = params.get("decision")
        if decision is not None:
            if decision not in DECISIONS:
                raise InvalidRequestError("decision must be allow, deny or error",
                                          param="decision")
            got["decision"] = decision
        return cls(**got)

    def where(self, q: Select) -> Select:
        """The exact tests (time included) on a select of ``audit_log``."""
        for column, value in (("tenant_id", self.tenant), ("actor", self.actor),
                              ("action", self.action), ("decision", self.decision)):
            if value is not None:
                q = q.where(T.c[column] == value)
        if self.since is not None:
            q = q.where(T.c.ts >= _utc(self.since))
        if self.until is not None:
            q = q.where(T.c.ts < _utc(self.until))
        return q


def window(conn: Connection, filters: Filters, *,
           need_low: bool = True) -> tuple[int | None, int | None] | None:
    """The (lowest, highest) seq of the records ``filters`` match, when a time window is
    part of them: None for a bound not asked for (no ``since``, no ``until``, or not
    ``need_low``); None in place of the pair when nothing matches. One range scan, of the
    ``(ts, seq)`` index or of a filter's own when that one is narrower (``seq + 0`` keeps
    the planner from walking the primary key for the min and max instead)."""
    want_low = need_low and filters.since is not None
    if not want_low and filters.until is None:
        return None, None
    low, high = conn.execute(filters.where(
        select(func.min(T.c.seq + 0), func.max(T.c.seq + 0)))).one()
    if low is None:
        return None
    return (int(low) if want_low else None), (int(high) if filters.until is not None else None)


def _utc(value: datetime | None) -> datetime | None:
    return value.astimezone(UTC) if value is not None else None


def page(conn: Connection, filters: Filters, *, limit: int, after: int | None,
         newest_first: bool = False) -> tuple[list[dict[str, Any]], bool]:
    """Up to ``limit`` records past seq ``after`` matching ``filters``, in seq order (or,
    ``newest_first``, in reverse order, ``after`` then being the lowest seq of the page
    before), and whether there are more."""
    # past ``after`` of an earlier page the low bound is already behind us
    bounds = window(conn, filters, need_low=after is None or newest_first)
    if bounds is None:
        return [], False
    low, high = bounds
    order = T.c.seq.desc() if newest_first else T.c.seq
    q = filters.where(select(T)).order_by(order).limit(limit + 1)
    if after is not None:
        q = q.where(T.c.seq < after if newest_first else T.c.seq > after)
    if low is not None:
        q = q.where(T.c.seq >= low)
    if high is not None:
        q = q.where(T.c.seq <= high)
    rows = [dict(r._mapping) for r in conn.execute(q)]
    return rows[:limit], len(rows) > limit
