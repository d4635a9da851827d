"""The app factory: settings in, a wired ASGI app out. No module-level state."""

from __future__ import annotations

import asyncio
import gc
import logging
import os
import secrets
import shutil
import tempfile
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.middleware.cors import CORSMiddleware
from starlette.routing import Route

from autoglm.api import admin, health, identity, inference, models, openapi
from autoglm.api.errors import autoglm_error_handler, http_exception_handler
from autoglm.api.metrics import Metrics, metrics_endpoint
from autoglm.api.middleware import GatewayMiddleware
from autoglm.engine.base import Engine
from autoglm.engine.factory import build_engines
from autoglm.errors import AutoGLMError, ConfigError
from autoglm.security.access import Authorizer
from autoglm.security.auth import bootstrap
from autoglm.security.policy import PolicyStore
from autoglm.settings import Settings
from autoglm.store.db import Database, database_url
from autoglm.store.directory import Directory

log = logging.getLogger("autoglm.app")

Announce = Callable[[str, str], None]

# Every route, with the action the authorization stage checks (None: public). The
# isolation tests are generated from this table, so a route added without an action
# fails them.
ROUTES: list[tuple[str, str, Callable, str | None]] = [
    ("POST", "/v1/chat/completions", inference.chat_completions, "inference"),
    ("POST", "/v1/completions", inference.completions, "inference"),
    ("GET", "/v1/models", models.list_models, "model.list"),
    ("GET", "/v1/models/{model:path}", models.get_model, "model.list"),
    ("GET", "/admin/v1/engines", admin.list_engines, "engine.read"),
    ("POST", "/admin/v1/models/{model}/instances", admin.add_instance, "engine.write"),
    ("POST", "/admin/v1/models/{model}/instances/{name}/drain", admin.drain_instance,
     "engine.write"),
    ("POST", "/admin/v1/models/{model}/instances/{name}/resume", admin.resume_instance,
     "engine.write"),
    ("DELETE", "/admin/v1/models/{model}/instances/{name}", admin.remove_instance,
     "engine.write"),
    ("POST", "/admin/v1/tenants", identity.create_tenant, "tenant.create"),
    ("GET", "/admin/v1/tenants", identity.list_tenants, "tenant.list"),
    ("GET", "/admin/v1/tenants/{tenant}", identity.get_tenant, "tenant.read"),
    ("POST", "/admin/v1/tenants/{tenant}/projects", identity.create_project, "project.create"),
    ("GET", "/admin/v1/tenants/{tenant}/projects", identity.list_projects, "project.list"),
    ("GET", "/admin/v1/projects/{project}", identity.get_project, "project.read"),
    ("PATCH", "/admin/v1/projects/{project}", identity.update_project, "project.update"),
    ("POST", "/admin/v1/tenants/{tenant}/principals", identity.create_principal,
     "principal.create"),
    ("GET", "/admin/v1/tenants/{tenant}/principals", identity.list_principals,
     "principal.list"),
    ("GET", "/admin/v1/principals/{principal}", identity.get_principal, "principal.read"),
    ("POST", "/admin/v1/principals/{principal}/bindings", identity.create_binding,
     "binding.create"),
    ("DELETE", "/admin/v1/bindings/{binding}", identity.delete_binding, "binding.delete"),
    ("POST", "/admin/v1/principals/{principal}/keys", identity.create_key, "key.create"),
    ("GET", "/admin/v1/principals/{principal}/keys", identity.list_keys, "key.list"),
    ("GET", "/admin/v1/keys/{key}", identity.get_key, "key.read"),
    ("POST", "/admin/v1/keys/{key}/rotate", identity.rotate_key, "key.rotate"),
    ("POST", "/admin/v1/keys/{key}/revoke", identity.revoke_key, "key.revoke"),
    ("GET", "/admin/v1/policy", identity.get_policy, "policy.read"),
    ("POST", "/admin/v1/policy/validate", identity.validate_policy, "policy.validate"),
    ("GET", "/openapi.json", openapi.openapi, None),
    ("GET", "/healthz", health.healthz, None),
    ("GET", "/readyz", health.readyz, None),
    ("GET", "/metrics", metrics_endpoint, None),
]


def _log_announce(key: str, where: str) -> None:
    # Only reached when no console announcer is given (embedding the app in tests).
    log.warning("a new admin key was generated; only its hash is stored, in %s", where)


def create_app(
    settings: Settings,
    *,
    announce: Announce | None = None,
    engines: dict[str, Engine] | None = None,
) -> Starlette:
    settings.data_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    db = Database(database_url(settings))
    db.upgrade()  # migrations are applied at every start
    auth = bootstrap(settings, announce or _log_announce, db)
    metrics = Metrics()
    # Unix socket paths are limited to ~100 bytes: keep them short, private and per-app.
    # The directory is made (0700, must not exist yet) and removed by the lifespan.
    run_dir = Path(tempfile.gettempdir()) / f"autoglm-{os.getpid()}-{secrets.token_hex(4)}"
    engine_map: dict[str, Engine] = (
        engines if engines is not None else build_engines(settings, run_dir)
    )

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        run_dir.mkdir(mode=0o700)
        try:
            try:
                await asyncio.gather(*(e.start() for e in engine_map.values()))
            except (AutoGLMError, RuntimeError, OSError) as exc:
                raise ConfigError(f"engine failed to start: {exc}") from exc
            log.info("serving", extra={"models": list(engine_map), "auth": not auth.disabled})
            # Everything built so far lives as long as the server: keep it out of every
            # collection, and collect young objects less often (full collections of a
            # large heap were the p99 tail under load).
            gc.collect()
            gc.freeze()
            gc.set_threshold(10_000, 20, 20)
            yield
        finally:
            try:
                await asyncio.gather(*(e.close() for e in engine_map.values()),
                                     return_exceptions=True)
            finally:
                shutil.rmtree(run_dir, ignore_errors=True)
                db.close()

    routes = [Route(path, endpoint, methods=[method]) for method, path, endpoint, _ in ROUTES]
    middleware = []
    if settings.cors_allow_origins:  # outermost, so preflights need no key
        middleware.append(Middleware(
            CORSMiddleware, allow_origins=settings.cors_allow_origins, allow_credentials=True,
            allow_methods=["GET", "POST"], allow_headers=["authorization", "content-type"],
        ))
    middleware.append(Middleware(GatewayMiddleware, auth=auth, metrics=metrics,
                                 max_body_bytes=settings.max_body_bytes))
    app = Starlette(
        routes=routes,
        middleware=middleware,
        lifespan=lifespan,
        exception_handlers={HTTPException: http_exception_handler,
                            AutoGLMError: autoglm_error_handler},
    )
    app.state.settings = settings
    app.state.engines = engine_map
    app.state.metrics = metrics
    metrics.watch_engines(engine_map)
    app.state.auth = auth
    app.state.authz = Authorizer(PolicyStore(settings.policy_file), db)
    app.state.db = db
    app.state.directory = Directory(db)
    app.state.openapi = openapi.build(ROUTES)
    return app
