"""``autoglm engines``: each model of a running server, its instances, state and load."""

from __future__ import annotations

import json
import os
import urllib.error
import urllib.request
from typing import Any

from rich.console import Console
from rich.table import Table

from autoglm.errors import AutoGLMError
from autoglm.settings import Settings


def server_url(settings: Settings) -> str:
    scheme = "https" if settings.tls_enabled else "http"
    host = "127.0.0.1" if settings.host in ("0.0.0.0", "::", "") else settings.host
    return f"{scheme}://{host}:{settings.port}"


def fetch_engines(url: str, key: str | None, timeout: float = 10.0) -> list[dict[str, Any]]:
    if not key:
        raise AutoGLMError("no API key: pass --key or set AUTOGLM_ADMIN_KEY")
    req = urllib.request.Request(url.rstrip("/") + "/admin/v1/engines",
                                 headers={"Authorization": f"Bearer {key}"})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:  # noqa: S310 - our own server
            return json.loads(resp.read())["data"]
    except urllib.error.HTTPError as exc:
        try:
            message = json.loads(exc.read())["error"]["message"]
        except (ValueError, KeyError, TypeError):
            message = exc.reason
        raise AutoGLMError(f"{url} answered {exc.code}: {message}") from None
    except (urllib.error.URLError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        raise AutoGLMError(f"cannot reach a server at {url}: {reason}") from None


def render(engines: list[dict[str, Any]], console: Console) -> None:
    table = Table(title="engines")
    for column in ("model", "engine", "instance", "state", "weight", "in flight", "requests",
                   "failures", "address"):
        table.add_column(column, overflow="fold")  # wrap, never cut a name short
    for e in engines:
        for i, inst in enumerate(e["instances"]):
            state = inst["state"]
            color = {"up": "green", "down": "red", "draining": "yellow"}.get(state, "white")
            table.add_row(
                e["model"] if i == 0 else "", e["engine"] if i == 0 else "", inst["name"],
                f"[{color}]{state}[/]", str(inst.get("weight", "-")),
                f"{inst['in_flight']}" + (f" (+{inst['queued']} queued)" if inst.get("queued")
                                          else ""),
                str(inst.get("requests", "-")), str(inst.get("failures_total", "-")),
                inst.get("url") or (f"pid {inst['pid']}" if inst.get("pid") else "-"),
            )
    console.print(table)


def default_key() -> str | None:
    return os.environ.get("AUTOGLM_ADMIN_KEY")
