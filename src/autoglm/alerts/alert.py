"""``Alert``: one usage anomaly or quota crossing, as the detector or the quota watch found
it, before it is recorded (audit), counted (metrics) and sent (webhook)."""

from __future__ import annotations

import secrets
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from autoglm.timefmt import stamp

SCOPES = ("key", "tenant")
# requests, tokens, errors, refusals: counts per bucket against their baseline;
# new_address: requests from addresses the key never used before; quota: a tenant's daily
# token quota passing a threshold
SIGNALS = ("requests", "tokens", "errors", "refusals", "new_address", "quota")
ACTION = "alert.raised"  # the audit action of every alert


def new_id() -> str:
    return "alr_" + secrets.token_hex(8)


@dataclass(frozen=True, slots=True)
class Alert:
    scope: str  # key | tenant
    subject: str  # the key id or the tenant id
    signal: str
    value: float  # what was seen: a bucket's count, or the share of the quota used
    baseline: float  # the subject's usual level (quota: the threshold's share)
    threshold: float  # the value at and above which it alerts
    rule: str  # the rule, with its numbers, as text
    at: float  # epoch seconds: the end of the bucket, or the time of the quota check
    bucket_s: float
    tenant_id: str | None = None
    key_id: str | None = None
    principal_id: str | None = None  # the key's owner (key alerts)
    spread: float | None = None
    peak: float | None = None  # the subject's usual peak (see ``detector``)
    addresses: tuple[str, ...] = ()  # new_address: the new client addresses (at most 5)
    extra: Mapping[str, Any] = field(default_factory=dict)  # quota: used, limit, day
    id: str = field(default_factory=new_id)

    @property
    def time(self) -> datetime:
        return datetime.fromtimestamp(self.at, UTC)

    def payload(self) -> dict[str, Any]:
        """The alert as JSON data: the webhook's body and the API's view."""
        return {
            "id": self.id, "type": ACTION, "ts": stamp(self.time), "scope": self.scope,
            "subject": self.subject, "signal": self.signal, "value": self.value,
            "baseline": round(self.baseline, 3), "threshold": round(self.threshold, 3),
            "spread": round(self.spread, 3) if self.spread is not None else None,
            "peak": round(self.peak, 3) if self.peak is not None else None,
            "rule": self.rule, "bucket_s": self.bucket_s, "tenant_id": self.tenant_id,
            "key_id": self.key_id, "principal_id": self.principal_id,
            "new_addresses": list(self.addresses), **dict(self.extra),
        }
