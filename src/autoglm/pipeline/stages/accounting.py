"""Accounting: tokens and time to first token, per model, on every engine.

(The per-request line of the access log and the request metrics are the transport's:
they also cover requests that never reach the pipeline.)
"""

from __future__ import annotations

from autoglm.api.metrics import Metrics
from autoglm.pipeline.context import RequestContext
from autoglm.pipeline.stage import Stage


class Accounting(Stage):
    name = "accounting"

    def __init__(self, metrics: Metrics) -> None:
        self.metrics = metrics

    def after(self, ctx: RequestContext) -> None:
        if not ctx.model:
            return
        ttft, prompt, completion = self.metrics.per_model(ctx.model)
        if ctx.first_token_at is not None:
            ttft.observe(ctx.first_token_at - ctx.started)
        if ctx.prompt_tokens:
            prompt.inc(ctx.prompt_tokens)
        if ctx.completion_tokens:
            completion.inc(ctx.completion_tokens)
