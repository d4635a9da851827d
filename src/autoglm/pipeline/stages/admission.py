"""Admission: at most the engine's capacity runs at once; the rest wait in its bounded
fair queue (``engine/admission.py``), for every engine kind. Full, waited too long, or
the engine down: 503 with Retry-After. The permit goes back when the request is over.
"""

from __future__ import annotations

from autoglm.pipeline.context import RequestContext
from autoglm.pipeline.request import InferenceRequest
from autoglm.pipeline.stage import Stage


class Admission(Stage):
    name = "admission"

    async def before(self, ctx: RequestContext, req: InferenceRequest) -> None:
        engine = ctx.engine
        engine.check_available()  # a dead or restarting engine: 503 before queueing
        ctx.state["admission"] = await engine.queue.acquire(ctx.owner)

    def after(self, ctx: RequestContext) -> None:
        permit = ctx.state.pop("admission", None)
        if permit is not None:
            permit.release()
