"""Usage anomaly alerts: per key and per tenant, over requests, tokens, errors, refusals and
client addresses, each against its own recent and seasonal baseline; and tenants nearing
their daily token quota.

``Feed`` counts from the request path; ``Detector`` (pure) judges each bucket;
``QuotaWatch`` the quotas; ``AlertSink`` records (audit), counts (metrics) and sends
(``Webhook``) what they find; ``AlertMonitor`` runs them once per bucket.
"""

from autoglm.alerts.alert import ACTION, Alert
from autoglm.alerts.detector import Detector, Rule, Tally
from autoglm.alerts.feed import Feed
from autoglm.alerts.monitor import AlertMonitor
from autoglm.alerts.quota import QuotaWatch
from autoglm.alerts.sink import AlertMetrics, AlertSink
from autoglm.alerts.webhook import Webhook, sign, verify

__all__ = ["ACTION", "Alert", "AlertMetrics", "AlertMonitor", "AlertSink", "Detector", "Feed",
           "QuotaWatch", "Rule", "Tally", "Webhook", "sign", "verify"]
