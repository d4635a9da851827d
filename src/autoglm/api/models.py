"""``GET /v1/models`` and ``GET /v1/models/{model}``."""

from __future__ import annotations

from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse

from autoglm.engine.base import Engine
from autoglm.errors import ModelNotFoundError
from autoglm.security.access import Authorizer


def _card(engine: Engine) -> dict[str, Any]:
    m = engine.model
    card = {"id": m.id, "object": "model", "created": m.created, "owned_by": m.owned_by,
            "context_length": m.context_length}
    if m.verification is not None:
        card["verification"] = m.verification
    return card


async def _may_see(authz: Authorizer, identity: Any, project: str | None, model: str) -> bool:
    """Listed when the caller's `model.list` right covers it (in the chosen project, within
    the project's models and the key's narrowing)."""
    try:
        await authz.require_model(identity, model, project, action="model.list")
    except ModelNotFoundError:
        return False
    return True


async def visible_cards(engines: dict[str, Engine], authz: Authorizer, identity: Any,
                        project: str | None) -> list[dict[str, Any]]:
    """The model cards this caller may see: the model list of REST and gRPC."""
    return [_card(e) for m, e in engines.items() if await _may_see(authz, identity, project, m)]


async def _visible(request: Request, model: str) -> bool:
    ctx = request.scope["state"]["ctx"]
    return await _may_see(request.app.state.authz, ctx.identity, ctx.project, model)


async def list_models(request: Request) -> JSONResponse:
    ctx = request.scope["state"]["ctx"]
    data = await visible_cards(request.app.state.engines, request.app.state.authz,
                               ctx.identity, ctx.project)
    return JSONResponse({"object": "list", "data": data})


async def get_model(request: Request) -> JSONResponse:
    model = request.path_params["model"]
    engine = request.app.state.engines.get(model)
    if engine is None or not await _visible(request, model):
        raise ModelNotFoundError(
            f"The model '{model}' does not exist or you do not have access to it.",
            param="model")
    return JSONResponse(_card(engine))
