"""``GET /v1/models`` and ``GET /v1/models/{model}``."""

from __future__ import annotations

from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse

from autoglm.engine.base import Engine
from autoglm.errors import ModelNotFoundError


def _card(engine: Engine) -> dict[str, Any]:
    m = engine.model
    card = {"id": m.id, "object": "model", "created": m.created, "owned_by": m.owned_by,
            "context_length": m.context_length}
    if m.verification is not None:
        card["verification"] = m.verification
    return card


async def _visible(request: Request, model: str) -> bool:
    """Listed only when the caller may run inference on it (in the chosen project)."""
    ctx = request.scope["state"]["ctx"]
    try:
        await request.app.state.authz.require_model(ctx.identity, model, ctx.project)
    except ModelNotFoundError:
        return False
    return True


async def list_models(request: Request) -> JSONResponse:
    engines = request.app.state.engines
    data = [_card(e) for m, e in engines.items() if await _visible(request, m)]
    return JSONResponse({"object": "list", "data": data})


async def get_model(request: Request) -> JSONResponse:
    model = request.path_params["model"]
    engine = request.app.state.engines.get(model)
    if engine is None or not await _visible(request, model):
        raise ModelNotFoundError(
            f"The model '{model}' does not exist or you do not have access to it.",
            param="model")
    return JSONResponse(_card(engine))
