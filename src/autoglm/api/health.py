"""``GET /healthz`` (the process answers) and ``GET /readyz`` (every engine is ready).

Without a key, ``/readyz`` says only ready or not (for load balancers and probes): the
details (models, engines, pids, instance names) are for callers whose key may read engines
(``engine.read``), or for everyone where the operator opened them (``ops_public``).
"""

from __future__ import annotations

import asyncio

from starlette.requests import Request
from starlette.responses import JSONResponse

from autoglm.errors import AuthenticationError
from autoglm.security.policy import Resource


async def healthz(request: Request) -> JSONResponse:
    return JSONResponse({"status": "ok"})


async def may_see_operations(request: Request) -> bool:
    """Whether this caller may see operational details (readyz checks, metrics)."""
    state = request.app.state
    if state.settings.ops_public:
        return True
    ctx = request.scope["state"]["ctx"]
    if not ctx.credentials:
        return False
    try:
        identity = await state.auth.authenticate(ctx.credentials, ctx.client)
    except AuthenticationError:
        return False
    return state.authz.allows(identity, "engine.read", Resource())


async def readyz(request: Request) -> JSONResponse:
    engines = request.app.state.engines
    results = await asyncio.gather(*(e.health() for e in engines.values()))
    checks = {}
    for engine, h in zip(engines.values(), results):
        checks[engine.model.id] = {
            "kind": "engine",
            "engine": h.name,
            "status": h.status,
            "latency_ms": None if h.latency_ms is None else round(h.latency_ms, 3),
            **h.detail,
        }
    ready = bool(checks) and all(c["status"] == "ready" for c in checks.values()
                                 if c["kind"] == "engine")
    headers = {} if ready else {"retry-after": "1"}
    body: dict = {"status": "ready" if ready else "not_ready"}
    redis = request.app.state.redis
    if redis is not None:  # Redis away: still serving (limits per process), but degraded
        await redis.ping()
        checks["redis"] = {"kind": "redis", "status": "degraded" if redis.down else "ready",
                           "where": redis.where,
                           **({"reason": redis.reason} if redis.down else {})}
        if ready and redis.down:
            body["status"] = "degraded"
    edge = request.app.state.edge
    if edge is not None:  # an edge node: its link to the centre, and how old its copy is
        checks["edge"] = edge.status()
        if ready and (not edge.reachable or edge.stale()):
            body["status"] = "degraded"
    if await may_see_operations(request):
        body["checks"] = checks
    return JSONResponse(
        body,
        status_code=200 if ready else 503,
        headers=headers,
    )
