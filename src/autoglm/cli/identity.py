"""``autoglm tenants|projects|principals|keys``: the identity admin API from the shell.

With ``--url`` the commands talk to a running server (``--key`` or ``$AUTOGLM_ADMIN_KEY``).
Without it they run the same ``/admin/v1`` routes in-process against the configured
database, as the local operator (a platform admin: whoever can read the database and
its pepper is one already); the audit records the actor as ``cli``. Either way the same
validation, policy and audit apply.
"""

from __future__ import annotations

import json
import os
import secrets
import sys
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path
from typing import Annotated, Any, Optional

import httpx
import typer
from rich.console import Console
from rich.table import Table

from autoglm.cli.output import fail
from autoglm.errors import AutoGLMError
from autoglm.settings import load_settings

tenants_app = typer.Typer(help="Tenants (departments).", no_args_is_help=True)
projects_app = typer.Typer(help="Projects (teams) and the models they may use.",
                           no_args_is_help=True)
principals_app = typer.Typer(help="People and service accounts, and their roles.",
                             no_args_is_help=True)
keys_app = typer.Typer(help="API keys: create, list, rotate, revoke.", no_args_is_help=True)

Config = Annotated[Optional[Path], typer.Option("--config", "-c", help="YAML settings file.")]
Url = Annotated[Optional[str], typer.Option(help="A running server; unset: the database.")]
Key = Annotated[Optional[str], typer.Option(help="Admin key for --url ($AUTOGLM_ADMIN_KEY).")]
AsJson = Annotated[bool, typer.Option("--json", help="Print JSON.")]


@contextmanager
def _client(config: Path | None, url: str | None, key: str | None):
    if url:
        key = key or os.environ.get("AUTOGLM_ADMIN_KEY")
        if not key:
            raise AutoGLMError("no API key: pass --key or set AUTOGLM_ADMIN_KEY")
        with httpx.Client(base_url=url.rstrip("/"), timeout=30, trust_env=False,
                          headers={"Authorization": f"Bearer {key}"}) as http:
            yield http
        return
    from starlette.testclient import TestClient

    from autoglm.api.app import create_app
    from autoglm.logs import setup_logging
    from autoglm.security.auth import ANONYMOUS_ADMIN

    settings = load_settings(config)
    setup_logging("warning")
    app = create_app(settings, engines={}, make_admin_key=False)
    token = secrets.token_urlsafe(32)
    operator = replace(ANONYMOUS_ADMIN, key_id="cli", principal_id="cli", principal_name="cli")
    if app.state.auth.keys is not None:
        app.state.auth.keys.pin(token, operator)
    with TestClient(app, base_url="http://cli", raise_server_exceptions=False,
                    headers={"Authorization": f"Bearer {token}"}) as http:
        yield http


def _call(config: Path | None, url: str | None, key: str | None, method: str, path: str,
          body: dict[str, Any] | None = None) -> Any:
    try:
        with _client(config, url, key) as http:
            resp = http.request(method, "/admin/v1" + path, json=body)
    except httpx.HTTPError as exc:
        raise AutoGLMError(f"cannot reach {url}: {exc}") from None
    return answer(resp)


def answer(resp: httpx.Response) -> Any:
    """An admin API answer's JSON, or its OpenAI error as one ``AutoGLMError`` line."""
    try:
        data = resp.json()
    except ValueError:
        raise AutoGLMError(f"unexpected answer ({resp.status_code})") from None
    if resp.status_code >= 400:
        raise AutoGLMError(f"{resp.status_code}: {data.get('error', {}).get('message', data)}")
    return data


def _show(data: Any, as_json: bool, columns: list[str], title: str) -> None:
    if as_json:
        print(json.dumps(data, indent=2))
        return
    rows = data["data"] if isinstance(data, dict) and "data" in data else [data]
    table = Table(title=title)
    for c in columns:
        table.add_column(c, overflow="fold")
    for row in rows:
        table.add_row(*[json.dumps(row.get(c)) if isinstance(row.get(c), list)
                        else str(row.get(c, "")) for c in columns])
    (Console() if sys.stdout.isatty() else Console(width=200)).print(table)


def _run(fn: Any) -> None:
    try:
        fn()
    except AutoGLMError as exc:
        raise fail(exc.message) from None


# --- tenants ----------------------------------------------------------------------------------
@tenants_app.command("create")
def tenants_create(name: str, config: Config = None, url: Url = None, key: Key = None,
                   as_json: AsJson = False) -> None:
    """Create a tenant."""
    _run(lambda: _show(_call(config, url, key, "POST", "/tenants", {"name": name}), as_json,
                       ["id", "name", "created_at"], "tenant"))


@tenants_app.command("list")
def tenants_list(config: Config = None, url: Url = None, key: Key = None,
                 as_json: AsJson = False) -> None:
    """List tenants."""
    _run(lambda: _show(_call(config, url, key, "GET", "/tenants?limit=100"), as_json,
                       ["id", "name", "granted_models", "created_at"], "tenants"))


@tenants_app.command("grant")
def tenants_grant(tenant: str,
                  model: Annotated[Optional[list[str]], typer.Option(
                      help="A model the tenant may use (repeat); none: take every grant back."
                  )] = None,
                  config: Config = None, url: Url = None, key: Key = None,
                  as_json: AsJson = False) -> None:
    """Replace the models granted to a tenant (its projects can only narrow them)."""
    _run(lambda: _show(_call(config, url, key, "PUT", f"/tenants/{tenant}/models",
                             {"models": model or []}), as_json, ["tenant_id", "models"],
                       "grant"))


# --- projects ---------------------------------------------------------------------------------
@projects_app.command("create")
def projects_create(tenant: str, name: str,
                    model: Annotated[Optional[list[str]], typer.Option(
                        help="A model the project may use (repeat).")] = None,
                    config: Config = None, url: Url = None, key: Key = None,
                    as_json: AsJson = False) -> None:
    """Create a project in a tenant."""
    body = {"name": name, "allowed_models": model or []}
    _run(lambda: _show(_call(config, url, key, "POST", f"/tenants/{tenant}/projects", body),
                       as_json, ["id", "tenant_id", "name", "allowed_models"], "project"))


@projects_app.command("list")
def projects_list(tenant: str, config: Config = None, url: Url = None, key: Key = None,
                  as_json: AsJson = False) -> None:
    """List a tenant's projects."""
    _run(lambda: _show(_call(config, url, key, "GET", f"/tenants/{tenant}/projects?limit=100"),
                       as_json, ["id", "name", "allowed_models"], "projects"))


@projects_app.command("set-models")
def projects_set_models(project: str,
                        model: Annotated[list[str], typer.Option(help="Allowed model (repeat).")],
                        config: Config = None, url: Url = None, key: Key = None,
                        as_json: AsJson = False) -> None:
    """Replace the models a project may use."""
    _run(lambda: _show(_call(config, url, key, "PATCH", f"/projects/{project}",
                             {"allowed_models": model}), as_json,
                       ["id", "name", "allowed_models"], "project"))


# --- principals -------------------------------------------------------------------------------
@principals_app.command("create")
def principals_create(tenant: str, name: str,
                      service: Annotated[bool, typer.Option(help="A service account.")] = False,
                      config: Config = None, url: Url = None, key: Key = None,
                      as_json: AsJson = False) -> None:
    """Create a person or service account in a tenant."""
    body = {"name": name, "kind": "service" if service else "user"}
    _run(lambda: _show(_call(config, url, key, "POST", f"/tenants/{tenant}/principals", body),
                       as_json, ["id", "tenant_id", "name", "kind"], "principal"))


@principals_app.command("list")
def principals_list(tenant: str, config: Config = None, url: Url = None, key: Key = None,
                    as_json: AsJson = False) -> None:
    """List a tenant's principals."""
    _run(lambda: _show(_call(config, url, key, "GET", f"/tenants/{tenant}/principals?limit=100"),
                       as_json, ["id", "name", "kind", "disabled"], "principals"))


@principals_app.command("bind")
def principals_bind(principal: str, role: str,
                    project: Annotated[Optional[str], typer.Option(help="Project scope.")] = None,
                    config: Config = None, url: Url = None, key: Key = None,
                    as_json: AsJson = False) -> None:
    """Give a principal a role: tenant_admin (whole tenant), member or guest (--project)."""
    body = {"role": role, "project_id": project}
    _run(lambda: _show(_call(config, url, key, "POST", f"/principals/{principal}/bindings",
                             body), as_json, ["id", "role", "tenant_id", "project_id"],
                       "binding"))


# --- keys ---------------------------------------------------------------------------------------
@keys_app.command("create")
def keys_create(principal: str,
                name: Annotated[str, typer.Option(help="A label for the key.")] = "",
                model: Annotated[Optional[list[str]], typer.Option(
                    help="Limit to this model (repeat).")] = None,
                project: Annotated[Optional[list[str]], typer.Option(
                    help="Limit to this project (repeat).")] = None,
                expires_hours: Annotated[Optional[float], typer.Option(
                    help="Expire after this many hours.")] = None,
                config: Config = None, url: Url = None, key: Key = None,
                as_json: AsJson = False) -> None:
    """Create a key; it is printed once and only its hash is kept."""
    body = {"name": name, "models": model, "projects": project,
            "expires_in_hours": expires_hours}
    _run(lambda: _show(_call(config, url, key, "POST", f"/principals/{principal}/keys", body),
                       as_json, ["id", "key", "name", "models", "projects", "expires_at"],
                       "key (shown once)"))


@keys_app.command("list")
def keys_list(principal: str, config: Config = None, url: Url = None, key: Key = None,
              as_json: AsJson = False) -> None:
    """List a principal's keys (never their secrets)."""
    _run(lambda: _show(_call(config, url, key, "GET", f"/principals/{principal}/keys?limit=100"),
                       as_json, ["id", "display", "name", "expires_at", "revoked_at",
                                 "rotated_to"], "keys"))


@keys_app.command("rotate")
def keys_rotate(key_id: str,
                grace_hours: Annotated[float, typer.Option(
                    help="Hours the old key keeps working.")] = 24.0,
                immediate: Annotated[bool, typer.Option(help="End the old key now.")] = False,
                config: Config = None, url: Url = None, key: Key = None,
                as_json: AsJson = False) -> None:
    """Issue a new key with the same rights; the old one ends after the grace window."""
    body = {"grace_hours": grace_hours, "immediate": immediate}
    _run(lambda: _show(_call(config, url, key, "POST", f"/keys/{key_id}/rotate", body), as_json,
                       ["id", "key", "rotated_from", "expires_at"], "rotated key (shown once)"))


@keys_app.command("revoke")
def keys_revoke(key_id: str, config: Config = None, url: Url = None, key: Key = None,
                as_json: AsJson = False) -> None:
    """Revoke a key at once."""
    _run(lambda: _show(_call(config, url, key, "POST", f"/keys/{key_id}/revoke"), as_json,
                       ["id", "display", "revoked_at"], "revoked key"))
