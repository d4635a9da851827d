"""``/admin/v1``: engines and their instances, changed at run time without a restart.

- ``GET  /admin/v1/engines``                                  every model, its engine, instances
- ``POST /admin/v1/models/{model}/instances``                 add an instance (InstanceSpec JSON)
- ``POST /admin/v1/models/{model}/instances/{name}/drain``    no new requests; in-flight finish
- ``POST /admin/v1/models/{model}/instances/{name}/resume``   take requests again
- ``DELETE /admin/v1/models/{model}/instances/{name}``        drain, then forget when idle

Who may call them is the policy's decision (``engine.read`` / ``engine.write``); the
policy check and the audit record run off the event loop, the pool changes on it.
"""

from __future__ import annotations

import asyncio
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse

from autoglm.api.admin_authz import check, record
from autoglm.api.body import read_json
from autoglm.engine.upstream.client import UpstreamEngine
from autoglm.engine.upstream.router import Instance
from autoglm.errors import InvalidRequestError, ModelNotFoundError, NotFoundError
from autoglm.pipeline.schemas import parse
from autoglm.settings import InstanceSpec


def _engine_view(model: str, engine: Any) -> dict[str, Any]:
    view: dict[str, Any] = {"model": model, **engine.stats()}
    if isinstance(engine, UpstreamEngine):
        view["engine"] = engine.spec.engine
        view["instances"] = engine.describe(with_url=True)
    else:
        view["engine"] = "llamacpp"
        sup = getattr(engine, "supervisor", None)
        view["instances"] = [{
            "name": "embedded", "state": "up" if view["up"] else (sup.state if sup else "down"),
            "in_flight": view["busy"], "queued": view["queued"], "slots": view["slots"],
            "pid": sup.pid if sup else None, "restarts": view["restarts"],
        }]
    return view


async def list_engines(request: Request) -> JSONResponse:
    await asyncio.to_thread(check, request, "engine.read", None, resource="engines")
    engines = request.app.state.engines
    return JSONResponse({"object": "list",
                         "data": [_engine_view(m, e) for m, e in engines.items()]})


async def _pool(request: Request) -> UpstreamEngine:
    """The model's pool, once the policy allows the change (asked off the event loop: a
    refusal is written to the audit trail)."""
    model = request.path_params["model"]
    await asyncio.to_thread(check, request, "engine.write", None, resource=model)
    engine = request.app.state.engines.get(model)
    if engine is None:
        raise ModelNotFoundError(f"The model '{model}' does not exist.", param="model")
    if not isinstance(engine, UpstreamEngine):
        raise InvalidRequestError(
            f"model '{model}' runs on the embedded engine and has no instances to change",
            param="model")
    return engine


async def _record(request: Request, change: str, engine: UpstreamEngine, inst: Instance) -> None:
    await asyncio.to_thread(record, request, f"engine.instance.{change}", engine.model.id,
                            {"instance": inst.name})


def _instance(engine: UpstreamEngine, name: str) -> Instance:
    inst = engine.router.find(name)
    if inst is None:
        raise NotFoundError(f"model '{engine.model.id}' has no instance '{name}'")
    return inst


async def add_instance(request: Request) -> JSONResponse:
    engine = await _pool(request)
    spec: InstanceSpec = parse(InstanceSpec, (await read_json(request))[1])
    try:
        inst = engine.router.add(spec)
    except ValueError as exc:
        raise InvalidRequestError(str(exc), param="name") from None
    await _record(request, "add", engine, inst)
    return JSONResponse(inst.describe(engine.router.clock(), with_url=True), status_code=201)


async def drain_instance(request: Request) -> JSONResponse:
    engine = await _pool(request)
    inst = _instance(engine, request.path_params["name"])
    engine.router.drain(inst)
    await _record(request, "drain", engine, inst)
    return JSONResponse(inst.describe(engine.router.clock(), with_url=True))


async def resume_instance(request: Request) -> JSONResponse:
    engine = await _pool(request)
    inst = _instance(engine, request.path_params["name"])
    engine.router.resume(inst)
    await _record(request, "resume", engine, inst)
    return JSONResponse(inst.describe(engine.router.clock(), with_url=True))


async def remove_instance(request: Request) -> JSONResponse:
    engine = await _pool(request)
    inst = _instance(engine, request.path_params["name"])
    engine.router.remove(inst)
    await _record(request, "remove", engine, inst)
    view = inst.describe(engine.router.clock(), with_url=True)
    view["removed"] = inst not in engine.router.instances
    return JSONResponse(view, status_code=200 if view["removed"] else 202)
