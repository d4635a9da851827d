"""``GET /healthz`` (the process answers) and ``GET /readyz`` (every engine is ready)."""

from __future__ import annotations

import asyncio

from starlette.requests import Request
from starlette.responses import JSONResponse


async def healthz(request: Request) -> JSONResponse:
    return JSONResponse({"status": "ok"})


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
    ready = bool(checks) and all(c["status"] == "ready" for c in checks.values())
    headers = {} if ready else {"retry-after": "1"}
    return JSONResponse(
        {"status": "ready" if ready else "not_ready", "checks": checks},
        status_code=200 if ready else 503,
        headers=headers,
    )
