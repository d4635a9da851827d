"""Authenticate: the caller's credentials -> a typed identity (401 otherwise).

A batch job arrives with its owner's identity already known; every other caller
presents a key (HTTP ``Authorization`` header, gRPC ``authorization`` metadata).
"""

from __future__ import annotations

from autoglm.pipeline.context import RequestContext
from autoglm.pipeline.request import InferenceRequest
from autoglm.pipeline.stage import Stage
from autoglm.security.auth import Authenticator


class Authenticate(Stage):
    name = "authenticate"

    def __init__(self, auth: Authenticator) -> None:
        self.auth = auth

    async def before(self, ctx: RequestContext, req: InferenceRequest) -> None:
        if ctx.identity is None:
            ctx.identity = await self.auth.authenticate(ctx.credentials, ctx.client)
