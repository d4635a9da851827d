"""Validate: the request checked by the engine that will serve it.

The embedded engine checks every parameter (400 naming what it cannot honour) and
prepares its own request; an upstream server validates the rest itself. Either way,
a bad request is refused before it waits for a slot. The embedded engine's request
carries the caller's tenant (its prefix cache is scoped by it).
"""

from __future__ import annotations

from dataclasses import replace

from autoglm.pipeline.context import RequestContext
from autoglm.pipeline.request import InferenceRequest
from autoglm.pipeline.stage import Stage


class Validate(Stage):
    name = "validate"

    async def before(self, ctx: RequestContext, req: InferenceRequest) -> None:
        ctx.engine.prepare(req)
        tenant = getattr(ctx.identity, "tenant_id", None)
        if req.generation is not None and tenant is not None:
            # the embedded engine keeps cached prompt prefixes per tenant
            req.generation = replace(req.generation, tenant=str(tenant))
