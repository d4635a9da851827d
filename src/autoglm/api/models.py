"""``GET /v1/models`` and ``GET /v1/models/{model}``."""

from __future__ import annotations

from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse

from autoglm.engine.base import Engine
from autoglm.errors import ModelNotFoundError


def _card(engine: Engine) -> dict[str, Any]:
    m = engine.model
    return {"id": m.id, "object": "model", "created": m.created, "owned_by": m.owned_by,
            "context_length": m.context_length}


async def list_models(request: Request) -> JSONResponse:
    engines = request.app.state.engines
    return JSONResponse({"object": "list", "data": [_card(e) for e in engines.values()]})


async def get_model(request: Request) -> JSONResponse:
    model = request.path_params["model"]
    engine = request.app.state.engines.get(model)
    if engine is None:
        raise ModelNotFoundError(f"The model '{model}' does not exist.", param="model")
    return JSONResponse(_card(engine))
