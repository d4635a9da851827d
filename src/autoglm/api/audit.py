"""``GET /admin/v1/audit``: the audit records, filtered, in seq order, a page at a time.

Filters: ``since`` and ``until`` (RFC 3339 times with their offset; ``ts >= since``,
``ts < until``), ``tenant``, ``actor``, ``action``, ``decision``. Keyset pages by seq:
``limit`` (1-100, default 20) and ``after=<seq>``; answers carry ``has_more`` and
``last_seq``. ``order=desc`` pages from the newest record back (``after``: the
``last_seq`` of the page before, the records below it). Each record comes whole, chain fields (``seq``, ``hash``, the sealed
``personal``) included, its time in the platform's one format; its personal fields
(``client_addr``, ``purpose``, kept ``text``) are opened with its subject's key, or are
null with ``erased: true`` once that subject was erased (``autoglm privacy erase``).

Action ``audit.read``. Platform admins read every record; a tenant admin reads their
tenant's (without ``tenant`` they get exactly those; another tenant is a 404, as
everywhere in this API); members and guests are refused (403 for their own tenant).
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse

from autoglm.api.admin_authz import check, ctx
from autoglm.api.body import blocking
from autoglm.audit.query import FILTERS, Filters, page
from autoglm.errors import InvalidRequestError
from autoglm.security.policy import Resource
from autoglm.timefmt import stamp

PARAMS = (*FILTERS, "limit", "after", "order")
SEQ_MAX = 2**63 - 1  # a BIGINT

# described in /openapi.json (``api/openapi.py``)
QUERY_PARAMS: tuple[dict[str, Any], ...] = (
    *({"name": n, "in": "query", "required": False,
       "schema": {"type": "string", "format": "date-time"},
       "description": d} for n, d in (("since", "records made at or after this time"),
                                      ("until", "records made before this time"))),
    *({"name": n, "in": "query", "required": False, "schema": {"type": "string"}}
      for n in ("tenant", "actor", "action")),
    {"name": "decision", "in": "query", "required": False,
     "schema": {"type": "string", "enum": ["allow", "deny", "error"]}},
    {"name": "limit", "in": "query", "required": False,
     "schema": {"type": "integer", "minimum": 1, "maximum": 100, "default": 20}},
    {"name": "after", "in": "query", "required": False,
     "schema": {"type": "integer", "minimum": 0, "maximum": 2**63 - 1,
                "description": "last_seq of the previous page"}},
    {"name": "order", "in": "query", "required": False,
     "schema": {"type": "string", "enum": ["asc", "desc"], "default": "asc",
                "description": "desc: the newest records first"}},
)


def _params(request: Request) -> dict[str, str]:
    out: dict[str, str] = {}
    for name, value in request.query_params.multi_items():
        if name not in PARAMS:
            raise InvalidRequestError(f"unknown parameter {name[:40]!r}; the audit log is "
                                      f"filtered by {', '.join(FILTERS)} and paged by limit, "
                                      "after and order", param=name[:40])
        if name in out:
            raise InvalidRequestError(f"{name} is given twice", param=name)
        out[name] = value
    return out


def _page_args(params: dict[str, str]) -> tuple[int, int | None]:
    raw = params.get("limit", "20")
    if not (raw.isascii() and raw.isdigit()) or not 1 <= int(raw) <= 100:
        raise InvalidRequestError("limit must be an integer from 1 to 100", param="limit")
    after = params.get("after")
    if after is not None and not (after.isascii() and after.isdigit() and len(after) <= 19
                                  and int(after) <= SEQ_MAX):
        raise InvalidRequestError("after must be the last_seq of an earlier page",
                                  param="after")
    return int(raw), int(after) if after is not None else None


def _view(row: dict[str, Any]) -> dict[str, Any]:
    return {"text": None, "erased": False, **row, "ts": stamp(row["ts"]),
            "detail": row["detail"] or {}}


@blocking
def list_audit(request: Request, body: bytes) -> JSONResponse:
    """Audit records in seq order, filtered by time, tenant, actor, action, decision."""
    params = _params(request)
    filters = Filters.parse(params)
    limit, after = _page_args(params)
    order = params.get("order", "asc")
    if order not in ("asc", "desc"):
        raise InvalidRequestError("order must be asc or desc", param="order")
    identity, _, _ = ctx(request)
    authz = request.app.state.authz
    if filters.tenant is not None:
        check(request, "audit.read", filters.tenant, resource="audit")
    elif not authz.allows(identity, "audit.read", Resource()):
        own = identity.tenant_id  # a tenant admin: their own tenant's records only
        if not own or not authz.allows(identity, "audit.read", Resource(tenant_id=own)):
            check(request, "audit.read", None, resource="audit")  # refused, and audited
        filters = replace(filters, tenant=own)
    with request.app.state.db.engine.connect() as conn:
        rows, more = page(conn, filters, limit=limit, after=after,
                          newest_first=order == "desc")
        request.app.state.audit.vault.open_rows(rows, conn)
    return JSONResponse({"object": "list", "data": [_view(r) for r in rows], "has_more": more,
                         "last_seq": rows[-1]["seq"] if rows else None})
