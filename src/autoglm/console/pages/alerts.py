"""Usage alerts (``autoglm.alerts``): ``GET /admin/v1/alerts`` for the caller (a tenant
admin sees their tenant's, a platform admin all), the newest first, from the last
``DAYS`` days."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from starlette.responses import Response

from autoglm.api import alerts as alerts_api
from autoglm.console.web import View, page
from autoglm.timefmt import stamp

DAYS = 7
SHOWN = 100
PAGES = 50  # at most this many pages of 100 are read to reach the newest


@page
async def alerts(view: View) -> Response:
    since = stamp(datetime.now(UTC) - timedelta(days=DAYS))
    found: list[dict[str, Any]] = []
    after: int | None = None
    for _ in range(PAGES):  # oldest first from the API: read on to the newest
        got = await view.call(alerts_api.list_alerts, query={
            "since": since, "limit": 100, **({"after": after} if after is not None else {})})
        found = (found + got["data"])[-SHOWN:]
        if not got["has_more"]:
            break
        after = got["last_seq"]
    return view.render("alerts.html", alerts=list(reversed(found)), days=DAYS)
