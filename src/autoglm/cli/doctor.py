"""``autoglm doctor``: preflight checks as a table (or ``--json``); exit 1 on any fail."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from autoglm.errors import AutoGLMError
from autoglm.ops.doctor import Context, Result, run_checks, summary
from autoglm.ops.doctor.result import failed
from autoglm.ops.doctor.runner import DEFAULT_NTP_SERVER
from autoglm.settings import Settings, load_settings

_STYLE = {"pass": "green", "warn": "yellow", "fail": "bold red", "skip": "dim"}


def doctor(
    config: Annotated[Path | None, typer.Option(
        "--config", "-c", help="YAML settings file.")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
    full: Annotated[bool, typer.Option(
        "--full", help="Re-hash every byte of every registered model (slow).")] = False,
    ntp_server: Annotated[str, typer.Option(
        envvar="AUTOGLM_NTP_SERVER",
        help="NTP server (host or host:port) for the clock check; '' skips it.")]
        = DEFAULT_NTP_SERVER,
) -> None:
    """Preflight checks: host, limits, kernel, disk, ports, clock, database, Redis, TLS,
    models, GPUs. Each says what is wrong and how to fix it; exit 1 on any fail."""
    started = time.monotonic()
    first: list[Result] = []
    try:
        settings = load_settings(config)
    except AutoGLMError as exc:
        first.append(failed("settings", exc.message, "fix the settings file or AUTOGLM_* "
                            "variables (`autoglm config show` prints what is in effect); the "
                            "other checks ran with the defaults"))
        settings = Settings.model_construct()
    ctx = Context(settings=settings, ntp_server=ntp_server, full_verify=full)
    # re-hashing every model can take minutes; everything else is bounded in seconds
    results = first + run_checks(ctx, deadline_s=3600.0 if full else 20.0)
    counts = summary(results)
    elapsed = round(time.monotonic() - started, 2)
    if as_json:
        print(json.dumps({"ok": counts["fail"] == 0, "summary": counts,
                          "elapsed_s": elapsed,
                          "checks": [r.as_dict() for r in results]}, indent=2, default=str))
    else:
        _render(results, counts, elapsed)
    if counts["fail"]:
        raise typer.Exit(1)


def _render(results: list[Result], counts: dict[str, int], elapsed: float) -> None:
    console = Console() if sys.stdout.isatty() else Console(width=200)
    table = Table("check", "status", "detail (and how to fix it)", title="autoglm doctor")
    for r in results:
        text = escape(r.detail)
        if r.status in ("warn", "fail"):
            text += f"\n[cyan]fix:[/] {escape(r.remedy)}"
        table.add_row(r.id, f"[{_STYLE[r.status]}]{r.status}[/]", text)
    console.print(table)
    line = ", ".join(f"{n} {k}" for k, n in counts.items() if n)
    verdict = "[bold red]not ready[/]" if counts["fail"] else "[green]ready[/]"
    console.print(f"{verdict}: {line} ({elapsed:g} s)", highlight=False)
