"""``GET /admin/v1/usage``: requests, tokens, errors and latency percentiles per hour or day.

Served from ``usage_rollup`` (``autoglm.audit.rollup``), which the audit writer keeps
from the same inference records as the chain, in the same transaction: never a scan of
the chain. Query parameters, all optional:

- ``bucket``: ``hour`` or ``day`` (default ``day``);
- ``since``, ``until``: an RFC 3339 time, a date, or an age (``90m``, ``24h``, ``7d``);
  the periods that start from ``since`` (rounded down to its hour or day) until before
  ``until``. Default: the last 24 hours (hour) or 30 days (day);
- ``tenant``, ``project``, ``key`` (a key id), ``model``: only those rows;
- ``limit`` (1-1000, default 100) and ``after`` (``last_id`` of the page before).

Who sees what is the policy's ``usage.read``, through the caller's bindings: a platform
admin everything, a tenant admin their tenant, members and guests their projects (a key
limited to some projects: those). Naming a tenant or project the caller cannot read is
refused like every admin route: 404 outside the caller's tenant, 403 inside it. Rows a
caller sees only through a guest binding have their key ids masked (``key_0a1b…``).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import ColumnElement, and_, false, or_, select, true
from starlette.datastructures import QueryParams
from starlette.requests import Request
from starlette.responses import JSONResponse

from autoglm.api.admin_authz import check as _check
from autoglm.api.admin_authz import ctx as _ctx
from autoglm.api.body import blocking
from autoglm.audit import rollup
from autoglm.errors import InvalidRequestError
from autoglm.security.policy import Resource
from autoglm.store.models import Project, UsageRollup, valid_id
from autoglm.timefmt import stamp

ACTION = "usage.read"
BUCKETS = {"hour": timedelta(hours=1), "day": timedelta(days=1)}
DEFAULT_SPAN = {"hour": timedelta(hours=24), "day": timedelta(days=30)}
MAX_AGE_DAYS = 3660  # ten years back is the furthest an age may reach
LIMIT_MAX = 1000
_AGE = re.compile(r"^([0-9]{1,7})([mhd])$")
_AGE_UNIT = {"m": "minutes", "h": "hours", "d": "days"}
_WHEN = "an RFC 3339 time (2025-05-01T08:00:00Z), a date (2025-05-01) or an age (24h, 7d)"

QUERY_PARAMS: tuple[dict[str, Any], ...] = (
    {"name": "bucket", "in": "query", "required": False,
     "schema": {"type": "string", "enum": ["hour", "day"], "default": "day"}},
    {"name": "since", "in": "query", "required": False,
     "schema": {"type": "string", "description": _WHEN}},
    {"name": "until", "in": "query", "required": False,
     "schema": {"type": "string", "description": _WHEN}},
    {"name": "tenant", "in": "query", "required": False, "schema": {"type": "string"}},
    {"name": "project", "in": "query", "required": False, "schema": {"type": "string"}},
    {"name": "key", "in": "query", "required": False,
     "schema": {"type": "string", "description": "an API key's id (never the key)"}},
    {"name": "model", "in": "query", "required": False, "schema": {"type": "string"}},
    {"name": "limit", "in": "query", "required": False,
     "schema": {"type": "integer", "minimum": 1, "maximum": LIMIT_MAX, "default": 100}},
    {"name": "after", "in": "query", "required": False,
     "schema": {"type": "integer", "minimum": 0, "description": "last_id of the previous page"}},
)
KNOWN = frozenset(p["name"] for p in QUERY_PARAMS)


@dataclass(frozen=True)
class Query:
    bucket: str
    since: datetime
    until: datetime
    tenant: str | None
    project: str | None
    key: str | None
    model: str | None
    limit: int
    after: int | None


@dataclass(frozen=True)
class Scope:
    """Rows a caller may read: of a tenant (None: any) and project (None: all of them)."""

    tenant_id: str | None
    project_id: str | None
    masked: bool  # read through a guest binding: key ids masked

    def covers(self, row: UsageRollup) -> bool:
        return ((self.tenant_id is None or self.tenant_id == row.tenant_id)
                and (self.project_id is None or self.project_id == row.project_id))


# --- parameters -------------------------------------------------------------------------
def _when(raw: str, param: str, now: datetime) -> datetime:
    age = _AGE.match(raw)
    if age is not None:
        delta = timedelta(**{_AGE_UNIT[age.group(2)]: int(age.group(1))})
        if delta > timedelta(days=MAX_AGE_DAYS):
            raise InvalidRequestError(f"{param}: an age of at most {MAX_AGE_DAYS} days",
                                      param=param)
        return now - delta
    try:
        value = datetime.fromisoformat(raw) if raw.isascii() else None
    except ValueError:
        value = None
    if value is None or not 1970 <= value.year <= 9998:
        raise InvalidRequestError(f"{param} must be {_WHEN}", param=param)
    if value.tzinfo is None:
        return value.replace(tzinfo=UTC)
    return value.astimezone(UTC)


_PREFIX = {"tenant": "ten_", "project": "prj_", "key": "key_"}


def _id(params: QueryParams, name: str) -> str | None:
    value = params.get(name)
    if value is not None and not (valid_id(value) and value.startswith(_PREFIX[name])):
        what = "an API key's id (key_…), never the key itself" if name == "key" else \
            f"a {name} id ({_PREFIX[name]}…)"
        raise InvalidRequestError(f"{name} must be {what}", param=name)
    return value


def _floor(value: datetime, bucket: str) -> datetime:
    value = value.replace(minute=0, second=0, microsecond=0)
    return value.replace(hour=0) if bucket == "day" else value


def parse_query(params: QueryParams, now: datetime | None = None) -> Query:
    """The query, or a 400 naming the parameter that is wrong."""
    for name in params:
        if name not in KNOWN:
            raise InvalidRequestError(f"unknown parameter {name[:40]!r}; usage is filtered by "
                                      f"{', '.join(sorted(KNOWN))}", param=name[:40])
    for name in KNOWN:
        if len(params.getlist(name)) > 1:
            raise InvalidRequestError(f"{name} may be given once", param=name)
    now = now or datetime.now(UTC)
    bucket = params.get("bucket", "day")
    if bucket not in BUCKETS:
        raise InvalidRequestError("bucket must be hour or day", param="bucket")
    until = _when(params["until"], "until", now) if "until" in params else now
    since = (_when(params["since"], "since", now) if "since" in params
             else until - DEFAULT_SPAN[bucket])
    since = _floor(since, bucket)
    if since >= until:
        raise InvalidRequestError("since must be before until", param="since")
    model = params.get("model")
    if model is not None and (not 1 <= len(model) <= 128 or not model.isprintable()):
        raise InvalidRequestError("model must be a model id (1 to 128 characters)",
                                  param="model")
    raw = params.get("limit", "100")
    if not (raw.isascii() and raw.isdigit() and len(raw) <= 4) or not 1 <= int(raw) <= LIMIT_MAX:
        raise InvalidRequestError(f"limit must be an integer from 1 to {LIMIT_MAX}",
                                  param="limit")
    after = params.get("after")
    if after is not None and not (after.isascii() and after.isdigit() and len(after) <= 18):
        raise InvalidRequestError("after must be the last_id of an earlier page", param="after")
    return Query(bucket=bucket, since=since, until=until, tenant=_id(params, "tenant"),
                 project=_id(params, "project"), key=_id(params, "key"), model=model,
                 limit=int(raw), after=int(after) if after is not None else None)


# --- who reads what -----------------------------------------------------------------------
def scopes_of(authz: Any, identity: Any) -> list[Scope]:
    """What each of the caller's bindings lets it read, as the policy and the key's
    narrowing decide (``Authorizer.allows`` with that one binding)."""
    out: list[Scope] = []
    projects = getattr(identity, "projects", None)
    for b in getattr(identity, "bindings", ()):
        one = replace(identity, bindings=(b,))
        if b.project_id is not None:
            candidates: Sequence[str | None] = (b.project_id,)
        else:  # a tenant or platform binding: all its projects, or the key's
            candidates = (None,) if projects is None else projects
        for project in candidates:
            if authz.allows(one, ACTION, Resource(tenant_id=b.tenant_id, project_id=project)):
                out.append(Scope(b.tenant_id, project, b.role == "guest"))
    return out


def narrow(scopes: Sequence[Scope], tenant: str | None, project: str | None,
           project_tenant: str | None) -> list[Scope]:
    """The scopes cut down to the tenant and project the query names (``project_tenant``:
    the named project's tenant, None if there is no such project)."""
    out: list[Scope] = []
    for s in scopes:
        t, p = s.tenant_id, s.project_id
        if tenant is not None:
            if t is not None and t != tenant:
                continue
            t = tenant
        if project is not None:
            if p is not None and p != project:
                continue
            if p is None and t is not None and t != project_tenant:
                continue  # a project of another tenant
            p = project
        out.append(Scope(t, p, s.masked))
    return out


def _readable(request: Request, q: Query) -> list[Scope]:
    identity, directory, _ = _ctx(request)
    scopes = scopes_of(request.app.state.authz, identity)
    project_tenant = None
    if q.project is not None:
        found = directory.find(Project, q.project)
        project_tenant = found.tenant_id if found is not None else None
    scopes = narrow(scopes, q.tenant, q.project, project_tenant)
    if not scopes:  # refused (and audited) as the admin routes refuse
        tenant = q.tenant or (project_tenant or "?" if q.project else None)
        _check(request, ACTION, tenant or getattr(identity, "tenant_id", None), q.project,
               resource="usage")
    return scopes


# --- reading -----------------------------------------------------------------------------------
def _where(q: Query, scopes: Sequence[Scope]) -> list[ColumnElement[bool]]:
    t = UsageRollup
    conds: list[ColumnElement[bool]] = [
        t.bucket == q.bucket, t.period_start >= q.since, t.period_start < q.until]
    if q.key is not None:
        conds.append(t.key_id == q.key)
    if q.model is not None:
        conds.append(t.model == q.model)
    within = []
    for s in scopes:
        parts = [c for c in ((t.tenant_id == s.tenant_id) if s.tenant_id is not None else None,
                             (t.project_id == s.project_id) if s.project_id is not None
                             else None) if c is not None]
        within.append(and_(*parts) if parts else true())
    conds.append(or_(*within) if within else false())
    return conds


def read_rows(db: Any, q: Query, scopes: Sequence[Scope]) -> tuple[list[UsageRollup], bool]:
    t = UsageRollup
    where = _where(q, scopes)
    with db.session() as s:
        stmt = select(t).where(*where)
        if q.after is not None:
            at = s.scalar(select(t.period_start).where(t.id == q.after, *where))
            if at is None:
                raise InvalidRequestError("after must be the last_id of an earlier page of "
                                          "the same query", param="after")
            stmt = stmt.where(or_(t.period_start > at, and_(t.period_start == at,
                                                            t.id > q.after)))
        rows = list(s.scalars(stmt.order_by(t.period_start, t.id).limit(q.limit + 1)))
    return rows[:q.limit], len(rows) > q.limit


def mask_id(value: str) -> str:
    """An id cut to a short prefix (``key_0a1b…``): enough to tell rows apart."""
    return value[:min(8, len(value) // 2)] + "…"


def view_row(row: UsageRollup, masked: bool) -> dict[str, Any]:
    hist = list(row.latency_hist or [])
    timed = sum(hist)
    peak = row.latency_max_ms
    return {
        "id": row.id, "bucket": row.bucket, "period_start": stamp(row.period_start),
        "tenant_id": row.tenant_id or None, "project_id": row.project_id or None,
        "key_id": (mask_id(row.key_id) if masked else row.key_id) if row.key_id else None,
        "model": row.model or None, "requests": row.requests, "errors": row.errors,
        "denials": row.denials, "prompt_tokens": row.prompt_tokens,
        "completion_tokens": row.completion_tokens,
        "total_tokens": row.prompt_tokens + row.completion_tokens,
        "latency_p50_ms": rollup.percentile(hist, 0.50, peak),
        "latency_p95_ms": rollup.percentile(hist, 0.95, peak),
        "latency_p99_ms": rollup.percentile(hist, 0.99, peak),
        "latency_mean_ms": round(row.latency_sum_ms / timed, 3) if timed else None,
        "latency_max_ms": peak if timed else None,
    }


@blocking
def get_usage(request: Request, body: bytes) -> JSONResponse:
    """Usage per hour or day: requests, tokens, errors, denials, latency percentiles."""
    q = parse_query(request.query_params)
    scopes = _readable(request, q)
    rows, more = read_rows(request.app.state.db, q, scopes)
    clear = [s for s in scopes if not s.masked]
    data = [view_row(r, not any(s.covers(r) for s in clear)) for r in rows]
    return JSONResponse({"object": "list", "bucket": q.bucket, "since": stamp(q.since),
                         "until": stamp(q.until), "data": data, "has_more": more,
                         "last_id": data[-1]["id"] if data else None})
