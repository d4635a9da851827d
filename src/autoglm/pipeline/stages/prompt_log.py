"""Prompt log: the caller's texts on the log, only where ``log_prompts`` is on (it is off
by default: prompts may hold personal data). Absent from the stage list otherwise."""

from __future__ import annotations

import logging

from autoglm.pipeline.context import RequestContext
from autoglm.pipeline.request import InferenceRequest
from autoglm.pipeline.stage import Stage

log = logging.getLogger("autoglm.api")


class PromptLog(Stage):
    name = "prompt_log"

    async def before(self, ctx: RequestContext, req: InferenceRequest) -> None:
        log.info("prompt", extra={"model": ctx.model, "texts": req.texts()})
