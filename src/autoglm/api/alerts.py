"""``GET /admin/v1/alerts``: the usage alerts raised (``autoglm.alerts``), newest last.

Alerts are audit records (action ``alert.raised``), so this reads the audit log: every
process's and replica's alerts, in seq order, a page at a time. Filters ``since`` and
``until`` (RFC 3339 with offset) and ``tenant``; ``limit`` (1-100, default 20) and
``after=<last_seq>``. Each alert comes as the webhook sends it (``Alert.payload``), plus
its ``seq``; ``new_addresses`` holds the first new address (opened from the record's
sealed personal fields; empty once its owner was erased).

Action ``alert.read``: platform admins read every alert, a tenant admin their tenant's
(without ``tenant`` they get exactly those; another tenant is a 404); others are refused.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse

from autoglm.alerts.alert import ACTION as ALERT_ACTION
from autoglm.api.admin_authz import check, ctx
from autoglm.api.body import blocking
from autoglm.audit.query import Filters, page
from autoglm.errors import InvalidRequestError
from autoglm.security.policy import Resource
from autoglm.timefmt import stamp

ACTION = "alert.read"
PARAMS = ("since", "until", "tenant", "limit", "after")
SEQ_MAX = 2**63 - 1

# described in /openapi.json (``api/openapi.py``)
QUERY_PARAMS: tuple[dict[str, Any], ...] = (
    *({"name": n, "in": "query", "required": False,
       "schema": {"type": "string", "format": "date-time"},
       "description": d} for n, d in (("since", "alerts raised at or after this time"),
                                      ("until", "alerts raised before this time"))),
    {"name": "tenant", "in": "query", "required": False, "schema": {"type": "string"}},
    {"name": "limit", "in": "query", "required": False,
     "schema": {"type": "integer", "minimum": 1, "maximum": 100, "default": 20}},
    {"name": "after", "in": "query", "required": False,
     "schema": {"type": "integer", "minimum": 0, "maximum": SEQ_MAX,
                "description": "last_seq of the previous page"}},
)


def _params(request: Request) -> dict[str, str]:
    out: dict[str, str] = {}
    for name, value in request.query_params.multi_items():
        if name not in PARAMS:
            raise InvalidRequestError(f"unknown parameter {name[:40]!r}; alerts are filtered "
                                      "by since, until and tenant and paged by limit and "
                                      "after", param=name[:40])
        if name in out:
            raise InvalidRequestError(f"{name} is given twice", param=name)
        out[name] = value
    return out


def _page_args(params: dict[str, str]) -> tuple[int, int | None]:
    raw = params.get("limit", "20")
    if not (raw.isascii() and raw.isdigit() and len(raw) <= 3) or not 1 <= int(raw) <= 100:
        raise InvalidRequestError("limit must be an integer from 1 to 100", param="limit")
    after = params.get("after")
    if after is not None and not (after.isascii() and after.isdigit() and len(after) <= 19
                                  and int(after) <= SEQ_MAX):
        raise InvalidRequestError("after must be the last_seq of an earlier page",
                                  param="after")
    return int(raw), int(after) if after is not None else None


def view(row: dict[str, Any]) -> dict[str, Any]:
    """One ``alert.raised`` audit record as the alert's JSON."""
    detail = dict(row.get("detail") or {})
    scope, _, subject = (row.get("resource") or "").partition(":")
    addr = row.get("client_addr")
    detail.pop("new_addresses", None)
    return {"type": ALERT_ACTION, **detail, "seq": row["seq"], "ts": stamp(row["ts"]),
            "scope": scope, "subject": subject, "tenant_id": row.get("tenant_id"),
            "key_id": row.get("key_id"), "principal_id": row.get("actor"),
            "new_addresses": [addr] if addr else []}


@blocking
def list_alerts(request: Request, body: bytes) -> JSONResponse:
    """Usage alerts in the order raised, filtered by time and tenant."""
    params = _params(request)
    filters = replace(Filters.parse(params), action=ALERT_ACTION)
    limit, after = _page_args(params)
    identity, _, _ = ctx(request)
    authz = request.app.state.authz
    if filters.tenant is not None:
        check(request, ACTION, filters.tenant, resource="alerts")
    elif not authz.allows(identity, ACTION, Resource()):
        own = identity.tenant_id  # a tenant admin: their own tenant's alerts only
        if not own or not authz.allows(identity, ACTION, Resource(tenant_id=own)):
            check(request, ACTION, None, resource="alerts")  # refused, and audited
        filters = replace(filters, tenant=own)
    with request.app.state.db.engine.connect() as conn:
        rows, more = page(conn, filters, limit=limit, after=after)
        request.app.state.audit.vault.open_rows(rows, conn)
    return JSONResponse({"object": "list", "data": [view(r) for r in rows], "has_more": more,
                         "last_seq": rows[-1]["seq"] if rows else None})
