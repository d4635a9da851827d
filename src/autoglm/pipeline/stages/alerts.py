"""Alerts: each ended request of a known caller counted for the usage anomaly detector
(``autoglm.alerts``): a few dict operations, no I/O. Batch lines are left out: their pace
is the batch worker's, not the caller's. Refusals before the caller is known (a bad key)
have no key or tenant to count against; the audit log folds and records those.
"""

from __future__ import annotations

from autoglm.alerts.feed import Feed
from autoglm.pipeline.context import RequestContext
from autoglm.pipeline.stage import Stage


class Alerts(Stage):
    name = "alerts"

    def __init__(self, feed: Feed) -> None:
        self.feed = feed

    def after(self, ctx: RequestContext) -> None:
        identity = ctx.identity
        if identity is None or ctx.transport == "batch":
            return
        if ctx.outcome == "error":
            status = ctx.error.status if ctx.error is not None else 500
        else:
            status = 499 if ctx.outcome == "cancelled" else 200
        self.feed.count(getattr(identity, "key_id", None), getattr(identity, "tenant_id", None),
                        identity.id, ctx.client, ctx.prompt_tokens + ctx.completion_tokens,
                        status)
