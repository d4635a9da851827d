"""The app factory: settings in, a wired ASGI app out. No module-level state."""

from __future__ import annotations

import asyncio
import gc
import logging
import os
import secrets
import shutil
import socket
import tempfile
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.middleware.cors import CORSMiddleware
from starlette.routing import Route

from autoglm.alerts import AlertMonitor
from autoglm.api import openapi
from autoglm.api.errors import raise_routing_error
from autoglm.api.metrics import Metrics
from autoglm.api.middleware import GatewayMiddleware
from autoglm.api.routes import RouteTable, routes_for
from autoglm.audit import AuditLog, Record
from autoglm.audit.keys import AuditPaths, load_hmac_key
from autoglm.batch.system import BatchSystem
from autoglm.cache import ResponseCache
from autoglm.console.service import Console
from autoglm.edge.inbox import EdgeInbox
from autoglm.edge.link import EdgeLink
from autoglm.engine.base import Engine
from autoglm.engine.factory import build_engines
from autoglm.errors import AutoGLMError, ConfigError
from autoglm.limits import LimitBook, Meter
from autoglm.pipeline.service import InferenceService
from autoglm.pipeline.stage import Stage
from autoglm.pipeline.stages import StageDeps, build_stages
from autoglm.pipeline.stages.guard import PiiGuards
from autoglm.security.access import Authorizer
from autoglm.security.auth import bootstrap
from autoglm.security.policy import PolicyStore
from autoglm.settings import Settings
from autoglm.state.locks import Locks
from autoglm.state.redis import RedisLink
from autoglm.store.db import Database, database_url
from autoglm.store.directory import Directory
from autoglm.supply.mirror import Catalog

log = logging.getLogger("autoglm.app")

Announce = Callable[[str, str], None]
RPC_GRACE_S = 5.0  # in-flight gRPC calls may finish this long at shutdown


def _log_announce(key: str, where: str) -> None:
    # Only reached when no console announcer is given (embedding the app in tests).
    log.warning("a new admin key was generated; only its hash is stored, in %s", where)


def create_app(
    settings: Settings,
    *,
    announce: Announce | None = None,
    engines: dict[str, Engine] | None = None,
    extra_stages: dict[str, list[Stage]] | None = None,
    primary: bool = True,
    make_admin_key: bool = True,
) -> Starlette:
    """``extra_stages`` inserts pipeline stages before the named stage (tests, embedders).
    ``primary=False``: a gateway worker, whose main process applied the migrations.
    ``make_admin_key=False``: no admin key is generated (an in-process CLI command, where
    nobody would see it); the first ``serve`` makes and shows it."""
    settings.data_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    db = Database(database_url(settings))
    if primary:
        db.upgrade()  # migrations are applied at every start
    audit = AuditLog.from_settings(settings, db)  # the one append point of every record
    auth = bootstrap(settings, announce or _log_announce, db, generate=make_admin_key,
                     audit=audit)
    metrics = Metrics()
    # An edge node serves from its centre's identities and forwards its records there; a
    # centre keeps what its edge nodes forward (``autoglm.edge``).
    edge = (EdgeLink(settings, db, auth.keys) if settings.centre_url is not None else None)
    if edge is not None:
        auth.gate = edge.gate
    inbox = EdgeInbox(db, load_hmac_key(AuditPaths.under(settings.data_dir).hmac_key,
                                        create=False))
    link = (RedisLink(settings.redis_url.get_secret_value(), prefix=settings.redis_prefix)
            if settings.redis_url is not None else None)  # state shared across processes
    locks = Locks.from_settings(settings)  # single-flight across processes (with Redis)
    cache = ResponseCache.from_settings(settings, link, metrics, locks)  # Redis: redis_url
    meter = Meter(LimitBook({s: v.model_dump() for s, v in settings.rate_limits.items()}, db),
                  window_s=settings.rate_limit_window_s, link=link,
                  lease_fraction=settings.rate_limit_lease_fraction)
    try:  # usage anomalies and quotas (``alerts``); the webhook's secret is read here
        alerts = (AlertMonitor.from_settings(settings, db=db, audit=audit,
                                             registry=metrics.registry, limits=meter.book,
                                             link=link) if settings.alerts_enabled else None)
    except ConfigError:
        audit.close()
        db.close()
        raise
    # Unix socket paths are limited to ~100 bytes: keep them short, private and per-app.
    # The directory is made (0700, must not exist yet) and removed by the lifespan.
    run_dir = Path(tempfile.gettempdir()) / f"autoglm-{os.getpid()}-{secrets.token_hex(4)}"
    try:
        engine_map: dict[str, Engine] = (
            engines if engines is not None else build_engines(settings, run_dir)
        )
    except ConfigError as exc:  # a model refused by the trust policy, among others
        audit.append([Record(action="model.load", decision="deny", status=None,
                             resource=str(settings.model_path or settings.model or ""),
                             detail={"reason": exc.message[:500]})])
        audit.close()
        db.close()
        raise

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        run_dir.mkdir(mode=0o700)
        rpc = None
        audit.warm()  # its sealing process starts now, not with the first request's record
        try:
            async def start(model: str, engine: Engine) -> None:
                # one start of a model per host at a time, across processes (with Redis)
                async with locks.hold_async(f"engine-start:{socket.gethostname()}:{model}",
                                            what=f"a start of {model}"):
                    await engine.start()

            try:
                await asyncio.gather(*(start(m, e) for m, e in engine_map.items()))
            except (AutoGLMError, RuntimeError, OSError) as exc:
                await asyncio.to_thread(audit.append, [Record(
                    action="model.load", decision="deny", resource=",".join(engine_map),
                    detail={"reason": str(exc)[:500]})])
                raise ConfigError(f"engine failed to start: {exc}") from exc
            await asyncio.to_thread(audit.append, [  # what each model proved as it loaded
                Record(action="model.load", resource=model, model=model,
                       detail={"verification": e.model.verification or {}})
                for model, e in engine_map.items()])
            if edge is not None:  # syncs with the centre, forwards records, from now on
                await edge.start()
            await meter.start()  # the limits admins set, and reconciling with Redis
            if alerts is not None:  # judged once per bucket, sent from its own task
                await alerts.start()
            if settings.grpc_port is not None:  # gRPC beside REST, over the same service
                from autoglm.rpc.server import RpcServer  # grpc is loaded only when used

                started = RpcServer(app.state, settings, run_dir)
                await started.start()
                rpc = app.state.rpc = started
            log.info("serving", extra={"models": list(engine_map), "auth": not auth.disabled,
                                       "grpc_port": rpc.port if rpc is not None else None})
            # Everything built so far lives as long as the server: keep it out of every
            # collection, and collect young objects less often (full collections of a
            # large heap were the p99 tail under load).
            gc.collect()
            gc.freeze()
            gc.set_threshold(10_000, 20, 20)
            batch.worker.start()  # lines run behind live traffic (``batch.worker``)
            batch.sweeper.start()  # expired and orphan files (``batch.sweep``)
            yield
        finally:
            try:
                await batch.worker.stop()  # first: its lines go back while engines still run
                await batch.sweeper.stop()
                if rpc is not None:  # in-flight calls finish (grace) while engines still run
                    await rpc.stop(grace=RPC_GRACE_S)
                await asyncio.gather(*(e.close() for e in engine_map.values()),
                                     return_exceptions=True)
                await meter.stop()
                if edge is not None:
                    await edge.stop()
                if alerts is not None:
                    await alerts.stop()
                await cache.store.settled()  # answers being written to Redis land first
                if cache.flights is not None:
                    await cache.flights.settled()  # and the single-flight locks are freed
                if link is not None:
                    await link.close()
                locks.close()
            finally:
                shutil.rmtree(run_dir, ignore_errors=True)
                try:  # every queued record committed before the database goes
                    await asyncio.to_thread(audit.close)
                except AutoGLMError as exc:
                    log.error("audit records could not be committed at shutdown",
                              extra={"reason": exc.message})
                db.close()

    def policy_reloaded(applied: bool, error: str | None) -> None:  # queued: never blocks
        audit.submit(Record(action="policy.reload", decision="allow" if applied else "error",
                            resource=str(settings.policy_file or "default"),
                            detail={"error": error} if error else {}))

    authz = Authorizer(PolicyStore(settings.policy_file, on_reload=policy_reloaded), db)
    service = InferenceService(build_stages(
        StageDeps(auth=auth, authz=authz, engines=engine_map, metrics=metrics,
                  log_prompts=settings.log_prompts,
                  guards=PiiGuards(settings.pii_actions, settings.pii_tenant_actions),
                  audit=audit, text_tenants=frozenset(settings.audit_text_tenants),
                  meter=meter, default_max_tokens=settings.default_max_tokens, cache=cache,
                  alerts=alerts.feed if alerts is not None else None),
        extra_stages))
    batch = BatchSystem.build(settings, db, service, audit, auth, engine_map, link)
    table = routes_for(settings.mirror)
    routes = [Route(r.path, r.endpoint, methods=[r.method]) for r in table]
    console = Console.build(settings, db, auth.keys, authz)  # the web console (/console)
    middleware = []
    if settings.cors_allow_origins:  # outermost, so preflights need no key
        middleware.append(Middleware(
            CORSMiddleware, allow_origins=settings.cors_allow_origins, allow_credentials=True,
            allow_methods=["GET", "POST"], allow_headers=["authorization", "content-type"],
        ))
    middleware.append(Middleware(GatewayMiddleware, auth=auth, metrics=metrics,
                                 routes=RouteTable(table),
                                 max_body_bytes=settings.max_body_bytes,
                                 upload_max_bytes=settings.batch_file_max_bytes,
                                 tls=settings.tls_enabled, audit=audit,
                                 console=console.gate))
    app = Starlette(
        routes=routes,
        middleware=middleware,
        lifespan=lifespan,
        exception_handlers={HTTPException: raise_routing_error},
    )
    app.state.settings = settings
    app.state.engines = engine_map
    app.state.metrics = metrics
    metrics.watch_engines(engine_map)
    app.state.auth = auth
    app.state.authz = authz
    app.state.service = service
    app.state.db = db
    app.state.audit = audit
    app.state.meter = meter
    app.state.alerts = alerts
    app.state.redis = link
    app.state.response_cache = cache
    app.state.locks = locks
    app.state.edge = edge
    app.state.edge_inbox = inbox
    app.state.directory = Directory(db, audit)
    app.state.batch = batch
    app.state.console = console
    app.state.openapi = openapi.build([r for r in table if not r.console])
    if settings.mirror:  # the registry's verified models, over the Hugging Face API
        app.state.mirror = Catalog(settings.data_dir)
    return app
