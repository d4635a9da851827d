"""Authorize: the model named in the request, if this caller may use it.

An unknown model and a model the caller may not use (key, project or tenant grant)
get the same 404, so model names cannot be probed.
"""

from __future__ import annotations

from typing import Any

from autoglm.errors import InvalidRequestError, ModelNotFoundError
from autoglm.pipeline.context import RequestContext
from autoglm.pipeline.request import InferenceRequest
from autoglm.pipeline.stage import Stage
from autoglm.security.access import Authorizer


def not_found(model: str) -> ModelNotFoundError:
    return ModelNotFoundError(
        f"The model '{model}' does not exist or you do not have access to it.", param="model")


class Authorize(Stage):
    name = "authorize"

    def __init__(self, authz: Authorizer, engines: dict[str, Any]) -> None:
        self.authz = authz
        self.engines = engines

    async def before(self, ctx: RequestContext, req: InferenceRequest) -> None:
        model = req.model
        if not isinstance(model, str) or not model:
            if model is None:
                raise InvalidRequestError("'model' is a required property", param="model")
            raise InvalidRequestError("Invalid value for 'model': must be a string",
                                      param="model")
        engine = self.engines.get(model)
        if engine is None:
            raise not_found(model)
        ctx.model = model
        ctx.engine = engine
        await self.authz.require_model(ctx.identity, model, ctx.project)
