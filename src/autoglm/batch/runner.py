"""One batch line through the inference pipeline, exactly as a live request.

The line becomes a ``RequestContext`` (transport ``batch``, the batch owner's identity
already known, the batch's project, the line's ``custom_id`` as the client's request id)
and an ``InferenceRequest`` of the batch's endpoint, and goes through
``InferenceService.open``: every stage (authorize, validate, guard, admission, engine,
guard_output, accounting, audit) acts on it as on an HTTP or gRPC request. Its answer
is collected into the JSON body a live request would get.

What it came to is a ``LineResult`` (the status and body, error or not), except when the
engine had no room or was down (503, 429): then ``Retry``, and the line runs later.
"""

from __future__ import annotations

import logging
import secrets
from collections.abc import Callable
from dataclasses import dataclass

import orjson

from autoglm.api.errors import internal_error
from autoglm.audit import AuditLog, Record
from autoglm.batch.batches import LineResult, LineWork
from autoglm.batch.lines import ENDPOINTS
from autoglm.errors import (
    AuthenticationError,
    AutoGLMError,
    RateLimitError,
    ServiceUnavailableError,
)
from autoglm.pipeline.context import RequestContext
from autoglm.pipeline.openai_format import OpenAIEncoder
from autoglm.pipeline.request import InferenceRequest
from autoglm.pipeline.service import InferenceService
from autoglm.security.keystore import Identity

log = logging.getLogger("autoglm.batch")

KEY_GONE = ("The API key that created this batch was revoked or has expired (or its "
            "principal was disabled): the rest of the batch is not run.")
RETRY_S = 2.0


@dataclass(frozen=True)
class Retry:
    """Not run: no room or no engine right now. Run it again after ``delay_s``."""

    delay_s: float


class LineRunner:
    def __init__(self, service: InferenceService, audit: AuditLog) -> None:
        self.service = service
        self.audit = audit

    async def run(self, work: LineWork, identity: Identity | None,
                  opened: Callable[[], None] | None = None) -> LineResult | Retry:
        """``opened``: called once the request holds its slot (or was refused)."""
        rid = f"req_{secrets.token_hex(16)}"
        if identity is None:
            return self._key_gone(work, rid)
        ctx = RequestContext(rid, "batch", project=work.project_id, identity=identity,
                             client_request_id=work.custom_id[:128])
        req = InferenceRequest(ENDPOINTS[work.endpoint], body=orjson.loads(work.body))
        try:
            try:
                answer = await self.service.open(ctx, req)
            finally:
                if opened is not None:
                    opened()
            body = await OpenAIEncoder(req, answer).collect(answer)
        except (ServiceUnavailableError, RateLimitError) as exc:
            return Retry(max(RETRY_S, exc.retry_after or 0.0))
        except AutoGLMError as exc:
            return LineResult(exc.status, rid, exc.to_dict(),
                              prompt_tokens=ctx.prompt_tokens,
                              completion_tokens=ctx.completion_tokens)
        except Exception:
            log.exception("a batch line failed unexpectedly",
                          extra={"batch": work.batch_id, "line": work.index})
            return LineResult(500, rid, internal_error().to_dict())
        return LineResult(200, rid, body, prompt_tokens=ctx.prompt_tokens,
                          completion_tokens=ctx.completion_tokens)

    def _key_gone(self, work: LineWork, rid: str) -> LineResult:
        """Refused before the pipeline (there is no identity to give it), audited as the
        authenticate stage's refusals are."""
        err = AuthenticationError(KEY_GONE)
        model = orjson.loads(work.body).get("model")
        try:
            self.audit.record_refusal(Record(
                action="inference", decision="deny", status=err.status, actor=work.principal_id,
                key_id=work.key_id, tenant_id=work.tenant_id, project_id=work.project_id,
                resource=model if isinstance(model, str) else "", request_id=rid,
                detail={"transport": "batch", "code": err.code, "batch": work.batch_id}),
                durable=False)
        except AutoGLMError as exc:
            log.error("an audit record could not be queued", extra={"reason": exc.message})
        return LineResult(err.status, rid, err.to_dict())
