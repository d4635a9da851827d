"""The audit trail: ``GET /admin/v1/audit`` for the caller (a tenant admin sees their
tenant's records, a platform admin all), newest first, filtered; and, for those who may
read the whole trail, a check of the chain (``audit.verify``, as ``autoglm audit
verify``) on request, since it reads every record."""

from __future__ import annotations

import asyncio
import time
from typing import Any
from urllib.parse import urlencode

from starlette.responses import Response

from autoglm.api import audit as audit_api
from autoglm.audit.keys import AuditPaths
from autoglm.audit.query import FILTERS
from autoglm.audit.verify import verify
from autoglm.console.web import View, page

ROWS = 50


def _filters(view: View) -> dict[str, str]:
    q = view.request.query_params
    return {name: q[name].strip() for name in FILTERS if q.get(name, "").strip()}


async def _page(view: View, verification: dict[str, Any] | None) -> Response:
    filters = _filters(view)
    after = view.request.query_params.get("after")
    found = await view.call(audit_api.list_audit, query={
        **filters, "order": "desc", "limit": ROWS, "after": after})
    older = None
    if found["has_more"]:
        older = "/console/audit?" + urlencode({**filters, "after": found["last_seq"]})
    return view.render("audit.html", records=found["data"], filters=filters, older=older,
                       can_verify=view.may("audit.read"), verification=verification)


@page
async def audit(view: View) -> Response:
    return await _page(view, None)


def _verify(view: View) -> dict[str, Any]:
    started = time.perf_counter()
    report = verify(view.app.state.db, AuditPaths.under(view.app.state.settings.data_dir))
    return {**report.to_dict(), "ms": round((time.perf_counter() - started) * 1000)}


@page
async def audit_verify(view: View) -> Response:
    """The chain checked now (whole-trail readers only), above the same records."""
    if not view.may("audit.read"):
        return await _page(view, None)
    return await _page(view, await asyncio.to_thread(_verify, view))
