"""Limits: requests and tokens per minute per key, project and tenant, and tenants' daily
token quotas (``autoglm.limits``), after authorization and before any work.

The request's tokens are reserved up front (its ``max_tokens``, or the default, plus an
estimate of the prompt: a quarter of its characters) and settled to the real usage when it
ends, refused or not. A request over a limit gets a 429 in the OpenAI shape with
``Retry-After``; every response of a limited caller carries OpenAI's
``x-ratelimit-{limit,remaining,reset}-{requests,tokens}`` headers (the tightest of its
limits). Batch lines (transport ``batch``) have a lower priority: they may use only
``rate_limit_batch_share`` of each limit, and the batch worker retries a refused line
later instead of failing it. With no limit configured anywhere the stage costs one
attribute read.
"""

from __future__ import annotations

from autoglm.errors import RateLimitError
from autoglm.limits import Meter
from autoglm.pipeline.context import RequestContext
from autoglm.pipeline.request import InferenceRequest
from autoglm.pipeline.stage import Stage


class Limit(Stage):
    name = "limits"

    def __init__(self, meter: Meter, default_max_tokens: int, batch_share: float = 0.8) -> None:
        self.meter = meter
        self.default_max_tokens = default_max_tokens
        self.batch_share = batch_share  # batch lines leave the rest of each limit to live calls

    def reserve(self, req: InferenceRequest) -> int:
        body = req.body
        asked = body.get("max_completion_tokens", body.get("max_tokens"))
        answer = asked if isinstance(asked, int) and asked > 0 else self.default_max_tokens
        return answer + sum(len(t) for t in req.texts()) // 4 + 1

    async def before(self, ctx: RequestContext, req: InferenceRequest) -> None:
        if not self.meter.book.active:
            return
        identity = ctx.identity
        try:
            decision = await self.meter.take(
                getattr(identity, "key_id", None), ctx.project,
                getattr(identity, "tenant_id", None), self.reserve(req),
                share=self.batch_share if ctx.transport == "batch" else 1.0)
        except RateLimitError as exc:
            ctx.response_headers.extend(getattr(exc, "headers", ()))
            raise
        ctx.state[self.name] = decision
        ctx.response_headers.extend(decision.headers)

    def after(self, ctx: RequestContext) -> None:
        decision = ctx.state.get(self.name)
        if decision is not None:
            self.meter.settle(decision, ctx.prompt_tokens + ctx.completion_tokens)
