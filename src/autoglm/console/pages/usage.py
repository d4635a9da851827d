"""Usage over time, per model, tenant, project or key: the rows of ``GET /admin/v1/usage``
for the caller (the same scopes, the same masking of key ids for guests), summed per
period into a stacked bar chart, with the figures in a table beside it."""

from __future__ import annotations

from collections import defaultdict
from datetime import datetime, timedelta
from typing import Any

from starlette.responses import Response

from autoglm.api import usage as usage_api
from autoglm.console.charts import stacked_bars
from autoglm.console.web import View, page

SPANS = {"hour": ("24h", "72h", "7d"), "day": ("7d", "30d", "90d")}
GROUPS = ("model", "tenant", "project", "key")
METRICS = {"requests": ("requests",), "tokens": ("total_tokens",), "errors": ("errors",)}
MAX_PAGES = 5  # 5,000 rows: enough for a chart; narrow the period for more
TABLE_ROWS = 100  # the newest rows; the chart holds them all
STEP = {"hour": timedelta(hours=1), "day": timedelta(days=1)}


def _choice(view: View, name: str, options: tuple[str, ...]) -> str:
    value = view.request.query_params.get(name)
    return value if value in options else options[0]


def periods(since: str, until: str, bucket: str) -> list[datetime]:
    start, end = datetime.fromisoformat(since), datetime.fromisoformat(until)
    out = []
    while start < end and len(out) < 10_000:
        out.append(start)
        start += STEP[bucket]
    return out


def series_of(rows: list[dict[str, Any]], slots: list[datetime], group: str,
              metric: str) -> dict[str, list[float]]:
    index = {p: i for i, p in enumerate(slots)}
    out: dict[str, list[float]] = defaultdict(lambda: [0.0] * len(slots))
    field = METRICS[metric][0]
    for r in rows:
        i = index.get(datetime.fromisoformat(r["period_start"]))
        if i is not None:
            name = (r["model"] if group == "model" else r[f"{group}_id"]) or "—"
            out[name][i] += r[field]
    return dict(sorted(out.items(), key=lambda kv: -sum(kv[1])))


@page
async def usage(view: View) -> Response:
    bucket = _choice(view, "bucket", ("hour", "day"))
    since = _choice(view, "since", SPANS[bucket])
    group = _choice(view, "group", GROUPS)
    metric = _choice(view, "metric", tuple(METRICS))
    rows: list[dict[str, Any]] = []
    after = None
    for _ in range(MAX_PAGES):
        got = await view.call(usage_api.get_usage, query={
            "bucket": bucket, "since": since, "limit": 1000, "after": after})
        rows += got["data"]
        if not got["has_more"]:
            break
        after = got["last_id"]
    slots = periods(got["since"], got["until"], bucket)
    labels = [p.strftime("%H:00" if bucket == "hour" else "%m-%d") for p in slots]
    series = series_of(rows, slots, group, metric)
    chart = stacked_bars(labels, series, title=f"{view.t('usage.' + metric)} / "
                         f"{view.t('group.' + group)}",
                         desc=f"{bucket} {since}: {sum(map(sum, series.values())):g}")
    table = sorted(rows, key=lambda r: (r["period_start"], r["id"]), reverse=True)
    masked = any(r["key_id"] and r["key_id"].endswith("…") for r in rows)
    return view.render("usage.html", chart=chart, rows=table[:TABLE_ROWS], empty=not rows,
                       bucket=bucket, since=since, group=group, metric=metric,
                       spans=SPANS[bucket], groups=GROUPS, metrics=tuple(METRICS),
                       masked=masked, total=len(rows))
