"""Audit: one record per inference request, whatever its outcome, on every transport.

The record is queued (``AuditLog.submit``) and group-committed off the request path within
``audit_flush_ms`` (``audit_strict`` makes the answer wait for it). Refusals (a 4xx before
the engine: a bad key, a model the caller may not use, a blocked value) go through the
folder, so a flood of identical ones is one record with a count per interval. Prompt and
answer text are recorded only for the tenants of ``audit_text_tenants`` (``keep_text``),
as the guard left them; what the client wrote into the record (its request id, purpose,
consent id) is stored with personal data masked. The client address, the purpose and the
text are sealed under the caller's personal data key (``privacy.vault``).
"""

from __future__ import annotations

import logging
import time

from autoglm.audit import AuditLog, Record
from autoglm.errors import AutoGLMError
from autoglm.pipeline.context import RequestContext
from autoglm.pipeline.stage import Stage
from autoglm.pipeline.stages.keep_text import kept_texts
from autoglm.privacy import GuardPolicy, PiiGuard

log = logging.getLogger("autoglm.audit")


class Audit(Stage):
    name = "audit"

    def __init__(self, audit: AuditLog) -> None:
        self.audit = audit
        # what the client wrote into the record (its request id, purpose, consent id) is
        # stored with any personal data in it masked, whatever a tenant's policy allows
        self._mask = PiiGuard(GuardPolicy(default="mask"))

    def _clean(self, text: str | None) -> str | None:
        return self._mask.apply(text).text if text else text

    def after(self, ctx: RequestContext) -> None:
        identity = ctx.identity
        status, decision = 200, "allow"
        if ctx.outcome == "cancelled":
            status = 499
        elif ctx.outcome == "error":
            status = ctx.error.status if ctx.error is not None else 500
            decision = "deny" if 400 <= status < 500 else "error"
        rec = Record(
            action="inference", decision=decision, status=status,
            actor=identity.id if identity is not None else None,
            key_id=getattr(identity, "key_id", None),
            tenant_id=getattr(identity, "tenant_id", None),
            # a project the request was allowed in is a real one; any other is what the
            # client wrote (OpenAI-Project), masked like the rest of it
            project_id=ctx.project if decision == "allow" else self._clean(ctx.project),
            resource=ctx.model or "", client_addr=ctx.client, request_id=ctx.request_id,
            client_request_id=self._clean(ctx.client_request_id),
            purpose=self._clean(ctx.purpose), consent_id=self._clean(ctx.consent_id),
            model=ctx.model or None, prompt_tokens=ctx.prompt_tokens or None,
            completion_tokens=ctx.completion_tokens or None,
            latency_ms=round((time.perf_counter() - ctx.started) * 1000, 3),
            detail={"transport": ctx.transport,
                    **({"code": ctx.error.code} if ctx.error is not None and ctx.error.code
                       else {}),
                    **({"cache": ctx.state["cache"]} if "cache" in ctx.state else {})},
            text=kept_texts(ctx))
        try:
            if decision == "deny":
                self.audit.record_refusal(rec, durable=False)
            else:
                self.audit.submit(rec)
        except AutoGLMError as exc:  # after hooks must not raise; the log says what was lost
            log.error("an inference audit record could not be queued",
                      extra={"reason": exc.message})
