"""``AlertMonitor``: the feed, the detector, the quota watch and the sink of one process,
and the background task that runs them once per bucket.

When a bucket ends (``alerts_bucket_s`` after the last, aligned to the epoch) the task
takes the feed's tallies, asks the detector (on a worker thread: the detector is only
ever touched by this task, one evaluation at a time), checks the tenants' daily quotas (one query
of the usage table, off the event loop, while any limit is configured), and hands what
was found to the sink.

Several processes (``--workers``, replicas) each count and judge their own traffic: a
burst spread over N processes is judged N times, on each one's share. With ``redis_url``
an alert is first claimed in Redis (``SET NX`` on ``<prefix>alert:<scope>:<subject>:
<signal>`` for the cool-down; the quota's per day and threshold), so one burst or quota
crossing is one alert cluster-wide; without Redis each process may raise its own (as
each also counts its own limits then). While Redis is down each process raises its own.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from typing import Any

from sqlalchemy.exc import SQLAlchemyError

from autoglm.alerts.alert import Alert
from autoglm.alerts.detector import COUNTED, Detector, Rule
from autoglm.alerts.feed import Feed
from autoglm.alerts.quota import DAY_S, QuotaWatch, tokens_today
from autoglm.alerts.sink import AlertMetrics, AlertSink
from autoglm.alerts.webhook import Webhook, read_secret
from autoglm.audit import AuditLog
from autoglm.errors import ConfigError
from autoglm.settings import Settings
from autoglm.state.redis import RedisDown, RedisLink
from autoglm.store.db import Database

log = logging.getLogger("autoglm.alerts")
Usage = Callable[[float], dict[str, int]]  # tokens per tenant today, at a time (blocking)


class AlertMonitor:
    def __init__(self, rule: Rule, sink: AlertSink, *, quota: QuotaWatch | None = None,
                 usage: Usage | None = None, limits: Any = None,
                 link: RedisLink | None = None, clock: Callable[[], float] = time.time
                 ) -> None:
        self.rule = rule
        self.sink = sink
        self.feed = Feed(rule.max_subjects)
        self.detector = Detector(rule)
        self.quota = quota
        self.usage = usage
        self.limits = limits  # limits.LimitBook: the tenants' tokens_per_day
        self.link = link
        self.clock = clock
        self._bucket = self.detector.bucket_of(clock())  # the bucket being counted
        self._task: asyncio.Task[None] | None = None

    @classmethod
    def from_settings(cls, settings: Settings, *, db: Database, audit: AuditLog,
                      registry: Any, limits: Any = None,
                      link: RedisLink | None = None) -> AlertMonitor:
        rule = Rule(bucket_s=settings.alerts_bucket_s,
                    window=max(1, round(settings.alerts_window_s / settings.alerts_bucket_s)),
                    warmup_s=settings.alerts_warmup_s, cooldown_s=settings.alerts_cooldown_s,
                    k=settings.alerts_sensitivity, ratio=settings.alerts_ratio,
                    min_count=settings.alerts_min_count, min_tokens=settings.alerts_min_tokens)
        metrics = AlertMetrics(registry)
        webhook = None
        if settings.alerts_webhook_url is not None:
            if settings.alerts_webhook_secret_file is None:  # settings refuse it too
                raise ConfigError("alerts_webhook_url needs alerts_webhook_secret_file")
            webhook = Webhook(settings.alerts_webhook_url.get_secret_value(),
                              read_secret(settings.alerts_webhook_secret_file),
                              retries=settings.alerts_webhook_retries,
                              backoff_s=settings.alerts_webhook_backoff_s,
                              timeout_s=settings.alerts_webhook_timeout_s,
                              results=metrics.webhook_result)
        quota = QuotaWatch(settings.alerts_quota_thresholds) \
            if settings.alerts_quota_thresholds else None
        return cls(rule, AlertSink(audit, metrics, webhook), quota=quota,
                   usage=lambda now: tokens_today(db, now), limits=limits, link=link)

    # --- lifetime ---------------------------------------------------------------------------
    async def start(self) -> None:
        self._bucket = self.detector.bucket_of(self.clock())
        if self.sink.webhook is not None:
            await self.sink.webhook.start()
        self._task = asyncio.get_running_loop().create_task(self._run(), name="alerts")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
            self._task = None
        if self.sink.webhook is not None:
            await self.sink.webhook.stop()

    async def _run(self) -> None:
        while True:
            end = (self._bucket + 1) * self.rule.bucket_s
            await asyncio.sleep(max(0.0, end - self.clock()))
            try:
                await self.tick()
            except asyncio.CancelledError:
                raise
            except Exception:  # noqa: BLE001 - the loop must outlive any surprise
                log.exception("alert evaluation failed")
                self._bucket = max(self._bucket, self.detector.bucket_of(self.clock()))

    # --- one evaluation ---------------------------------------------------------------------
    async def tick(self) -> list[Alert]:
        """The bucket that ended: judge it, raise what it shows. (Also callable by tests.)"""
        now = self.clock()
        ended = max(self._bucket, self.detector.bucket_of(now) - 1)  # woken early: the same
        self._bucket = ended + 1
        # off the event loop: judging thousands of subjects takes tens of milliseconds
        verdict = await asyncio.to_thread(self.detector.observe, ended, self.feed.take())
        self.sink.metrics.set_active(verdict.active, (*COUNTED, "new_address"))
        alerts = verdict.alerts
        if self.quota is not None and self.usage is not None and self._quotas_on():
            try:
                used = await asyncio.to_thread(self.usage, now)
            except SQLAlchemyError as exc:  # the next bucket checks again
                log.warning("quota check skipped: the usage table cannot be read",
                            extra={"reason": " ".join(str(exc).split())[:200]})
            else:
                alerts = alerts + self.quota.check(now, used, self._tokens_per_day)
                self.sink.metrics.set_active({("tenant", "quota"): self.quota.active},
                                             ("quota",))
        kept = [a for a in alerts if await self._claim(a)]
        self.sink.emit(kept)
        return kept

    def _quotas_on(self) -> bool:
        return self.limits is not None and bool(self.limits.active)

    def _tokens_per_day(self, tenant: str) -> int | None:
        found = self.limits.of("tenant", tenant) if self.limits is not None else None
        return found.tokens_per_day if found is not None else None

    async def _claim(self, alert: Alert) -> bool:
        """Whether this process raises ``alert`` (with Redis: the first process to claim)."""
        link = self.link
        if link is None:
            return True
        if alert.signal == "quota":
            name = link.key("alert", "quota", alert.subject, str(alert.extra.get("day")),
                            f"{alert.threshold:g}")
            ttl = int(2 * DAY_S)
        else:
            name = link.key("alert", alert.scope, alert.subject, alert.signal)
            ttl = max(1, int(self.rule.cooldown_s))
        try:
            return bool(await link.call(lambda c: c.set(name, alert.id, nx=True, ex=ttl)))
        except RedisDown:
            return True
