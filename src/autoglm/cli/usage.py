"""``autoglm usage``: requests, tokens, errors and latency per hour or day, from the shell.

Reads ``GET /admin/v1/usage`` page by page, like the identity commands: with ``--url`` from a
running server (``--key`` or ``$AUTOGLM_ADMIN_KEY``; a member's key shows its projects),
without it in-process against the configured database as the local operator.
"""

from __future__ import annotations

import json
import sys
from typing import Annotated, Any, Optional

import httpx
import typer
from rich.console import Console
from rich.table import Table

from autoglm.cli.identity import AsJson, Config, Key, Url, _client, _run, answer
from autoglm.errors import AutoGLMError

COLUMNS = (("period_start", "period"), ("tenant_id", "tenant"), ("project_id", "project"),
           ("key_id", "key"), ("model", "model"), ("requests", "requests"),
           ("errors", "errors"), ("denials", "denials"), ("prompt_tokens", "prompt"),
           ("completion_tokens", "completion"), ("latency_p50_ms", "p50 ms"),
           ("latency_p95_ms", "p95 ms"), ("latency_p99_ms", "p99 ms"))
SUMMED = ("requests", "errors", "denials", "prompt_tokens", "completion_tokens")
PAGE = 1000


def _page(http: Any, params: dict[str, str]) -> dict[str, Any]:
    return answer(http.get("/admin/v1/usage", params=params))


def fetch(config: Any, url: str | None, key: str | None,
          params: dict[str, str]) -> dict[str, Any]:
    """Every page of the answer, as one list."""
    try:
        with _client(config, url, key) as http:
            out = last = _page(http, {**params, "limit": str(PAGE)})
            while last["has_more"]:
                last = _page(http, {**params, "limit": str(PAGE), "after": str(last["last_id"])})
                out["data"] += last["data"]
    except httpx.HTTPError as exc:
        raise AutoGLMError(f"cannot reach {url}: {exc}") from None
    out["has_more"], out["last_id"] = False, last["last_id"]
    return out


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:,.1f}"
    if isinstance(value, int):
        return f"{value:,}"
    return str(value)


def render(data: dict[str, Any], console: Console) -> None:
    rows = data["data"]
    table = Table(title=f"usage per {data['bucket']}, {data['since']} to {data['until']}")
    for _, title in COLUMNS:
        table.add_column(title, justify="right" if title not in
                         ("period", "tenant", "project", "key", "model") else "left")
    for row in rows:
        table.add_row(*[_cell(row.get(name)) for name, _ in COLUMNS])
    if len(rows) > 1:
        totals = {name: sum(r[name] for r in rows) for name in SUMMED}
        table.add_section()
        table.add_row("total", *[""] * 4, *[_cell(totals[name]) for name in SUMMED],
                      *[""] * 3)
    console.print(table)
    if not rows:
        console.print("no usage in that time (only inference requests are counted)")


def usage(
    bucket: Annotated[str, typer.Option(help="hour or day.")] = "day",
    since: Annotated[Optional[str], typer.Option(
        help="From: an RFC 3339 time, a date, or an age (24h, 7d).")] = None,
    until: Annotated[Optional[str], typer.Option(help="Until (default: now).")] = None,
    tenant: Annotated[Optional[str], typer.Option(help="Only this tenant (id).")] = None,
    project: Annotated[Optional[str], typer.Option(help="Only this project (id).")] = None,
    model: Annotated[Optional[str], typer.Option(help="Only this model.")] = None,
    key_id: Annotated[Optional[str], typer.Option(help="Only this API key (its id).")] = None,
    config: Config = None, url: Url = None, key: Key = None, as_json: AsJson = False,
) -> None:
    """Requests, tokens, errors and latency percentiles per hour or day."""
    params = {name: value for name, value in (
        ("bucket", bucket), ("since", since), ("until", until), ("tenant", tenant),
        ("project", project), ("model", model), ("key", key_id)) if value is not None}

    def show() -> None:
        data = fetch(config, url, key, params)
        if as_json:
            print(json.dumps(data, indent=2, ensure_ascii=False))
            return
        render(data, Console() if sys.stdout.isatty() else Console(width=200))

    _run(show)
