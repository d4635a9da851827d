"""Tenants nearing their daily token quota: ``QuotaWatch`` (pure) over what ``tokens_today``
reads from the usage table.

The quota is the tenant's ``tokens_per_day`` as the limits have it (``rate_limits`` and
the overrides set through ``PUT /admin/v1/limits/tenant/{id}``); the usage is the tokens
of the tenant's inference records committed today (UTC, the quota's day), from
``usage_rollup``, which every process and replica writes: the check sees all of them.
A tenant alerts once per day per threshold (``alerts_quota_thresholds``, 80% and 95%);
a tenant that passes two thresholds between two checks gets one alert, for the higher.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from datetime import UTC, datetime

from sqlalchemy import func, select

from autoglm.alerts.alert import Alert
from autoglm.store.db import Database
from autoglm.store.models import UsageRollup

DAY_S = 86_400.0


class QuotaWatch:
    def __init__(self, thresholds: Sequence[float]) -> None:
        self.thresholds = tuple(sorted(set(thresholds)))
        self._day: int | None = None
        self._raised: dict[str, float] = {}  # tenant -> the highest threshold raised today

    @property
    def active(self) -> int:
        """Tenants past a threshold today."""
        return len(self._raised)

    def check(self, now: float, used: Mapping[str, int],
              limit_of: Callable[[str], int | None]) -> list[Alert]:
        """``used``: tokens per tenant today; ``limit_of``: a tenant's tokens_per_day."""
        day = int(now // DAY_S)
        if day != self._day:
            self._day, self._raised = day, {}
        out: list[Alert] = []
        for tenant, tokens in used.items():
            limit = limit_of(tenant)
            if not limit or not self.thresholds:
                continue
            share = tokens / limit
            passed = [t for t in self.thresholds if share >= t]
            if not passed or self._raised.get(tenant, 0.0) >= passed[-1]:
                continue
            top = self._raised[tenant] = passed[-1]
            out.append(Alert(
                scope="tenant", subject=tenant, signal="quota", value=round(share, 4),
                baseline=top, threshold=top, at=now, bucket_s=DAY_S, tenant_id=tenant,
                rule=f"tokens used today >= {top:.0%} of tokens_per_day",
                extra={"used_tokens": tokens, "tokens_per_day": limit,
                       "day": datetime.fromtimestamp(day * DAY_S, UTC).date().isoformat()}))
        return out


def tokens_today(db: Database, now: float) -> dict[str, int]:
    """Tokens per tenant in today's (UTC) committed inference records (blocking)."""
    day = datetime.fromtimestamp(now // DAY_S * DAY_S, UTC)
    t = UsageRollup
    q = (select(t.tenant_id, func.sum(t.prompt_tokens + t.completion_tokens))
         .where(t.bucket == "day", t.period_start == day, t.tenant_id != "")
         .group_by(t.tenant_id))
    with db.session() as s:
        return {tenant: int(total or 0) for tenant, total in s.execute(q)}
