"""Where an alert goes: an audit record (``alert.raised``), the Prometheus metrics, and the
webhook's queue. Nothing here waits on the network or the database: the record is
queued for the audit writer's next group commit, the webhook delivers from its own task.

The audit record: ``action`` alert.raised, ``decision`` allow, ``tenant_id`` and
``key_id`` of the subject, ``actor`` the key's owner (key alerts; so a new address, kept
in ``client_addr``, is sealed under that person's key and erased with it), ``resource``
``<scope>:<subject>``, and in ``detail`` the alert's id, signal, value, baseline,
threshold, spread, rule and bucket (the quota's numbers for quota alerts).

Metrics: ``autoglm_alerts_total{scope,signal}`` (alerts raised),
``autoglm_alerts_active{scope,signal}`` (subjects over a threshold at the last
evaluation, cooled-down ones included; for quota: tenants past a threshold today),
``autoglm_alert_webhook_total{result}`` (delivered, retried, failed, dropped).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping

from prometheus_client import CollectorRegistry, Counter, Gauge

from autoglm.alerts.alert import ACTION, SCOPES, SIGNALS, Alert
from autoglm.alerts.webhook import Webhook
from autoglm.audit import AuditLog, Record
from autoglm.errors import AutoGLMError

log = logging.getLogger("autoglm.alerts")
WEBHOOK_RESULTS = ("delivered", "retried", "failed", "dropped")
_PAIRS = [(scope, signal) for scope in SCOPES for signal in SIGNALS
          if not (scope == "tenant" and signal == "new_address")
          and not (scope == "key" and signal == "quota")]


class AlertMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.raised = Counter("autoglm_alerts", "Usage alerts raised, by scope and signal.",
                              ["scope", "signal"], registry=registry)
        self.active = Gauge("autoglm_alerts_active", "Subjects over an alert threshold at the "
                            "last evaluation (quota: tenants past a threshold today).",
                            ["scope", "signal"], registry=registry)
        self.webhook = Counter("autoglm_alert_webhook", "Alert webhook deliveries by result: "
                               "delivered, retried (a try that failed and is tried again), "
                               "failed (given up), dropped (queue full).", ["result"],
                               registry=registry)
        for scope, signal in _PAIRS:  # every series exists from the start, at 0
            self.raised.labels(scope, signal)
            self.active.labels(scope, signal)
        for result in WEBHOOK_RESULTS:
            self.webhook.labels(result)

    def webhook_result(self, result: str) -> None:
        self.webhook.labels(result).inc()

    def set_active(self, active: Mapping[tuple[str, str], int], signals: Iterable[str]) -> None:
        """The active counts of ``signals`` (the rest keep their value)."""
        wanted = set(signals)
        for scope, signal in _PAIRS:
            if signal in wanted:
                self.active.labels(scope, signal).set(active.get((scope, signal), 0))


def record_of(alert: Alert) -> Record:
    detail = {k: v for k, v in alert.payload().items()
              if k not in ("type", "ts", "scope", "subject", "tenant_id", "key_id",
                           "principal_id", "new_addresses") and v is not None}
    if alert.addresses:
        detail["new_addresses"] = len(alert.addresses)
    return Record(action=ACTION, decision="allow", actor=alert.principal_id,
                  key_id=alert.key_id, tenant_id=alert.tenant_id,
                  resource=f"{alert.scope}:{alert.subject}",
                  client_addr=alert.addresses[0] if alert.addresses else None,
                  detail=detail)


class AlertSink:
    def __init__(self, audit: AuditLog, metrics: AlertMetrics,
                 webhook: Webhook | None = None) -> None:
        self.audit = audit
        self.metrics = metrics
        self.webhook = webhook

    def emit(self, alerts: Iterable[Alert]) -> None:
        for alert in alerts:
            self.metrics.raised.labels(alert.scope, alert.signal).inc()
            log.warning("usage alert", extra={"alert": alert.id, "scope": alert.scope,
                                              "subject": alert.subject, "signal": alert.signal,
                                              "value": alert.value,
                                              "threshold": round(alert.threshold, 3)})
            try:
                self.audit.submit(record_of(alert))
            except AutoGLMError as exc:
                log.error("an alert's audit record could not be queued",
                          extra={"alert": alert.id, "reason": exc.message})
            if self.webhook is not None:
                self.webhook.enqueue(alert.payload())
