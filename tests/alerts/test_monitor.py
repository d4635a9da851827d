"""``AlertMonitor`` without an engine: the feed's counts judged once per bucket on a given
clock, each alert an ``alert.raised`` audit record; two processes sharing a Redis of the
test's own raise one alert for one burst, and each raises its own while Redis is away."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry
from sqlalchemy import select

from autoglm.alerts import AlertMetrics, AlertMonitor, AlertSink, Rule
from autoglm.audit import AuditLog
from autoglm.state.redis import RedisLink
from autoglm.store.db import Database, database_url
from autoglm.store.models import AuditRecord
from tests.conftest import make_settings
from tests.redis_server import redis_server

__all__ = ["redis_server"]

RULE = Rule(bucket_s=60.0, window=30, warmup_s=300.0, cooldown_s=3600.0, min_count=10)
T0 = 1_800_000_000.0  # a bucket's start


class Clock:
    def __init__(self) -> None:
        self.now = T0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def audit(tmp_path: Path) -> Iterator[AuditLog]:
    settings = make_settings(tmp_path / "data")
    settings.data_dir.mkdir(parents=True)
    db = Database(database_url(settings))
    db.upgrade()
    log = AuditLog.from_settings(settings, db)
    yield log
    log.close()
    db.close()


def monitor(audit: AuditLog, clock: Clock, link: RedisLink | None = None) -> AlertMonitor:
    sink = AlertSink(audit, AlertMetrics(CollectorRegistry()))
    return AlertMonitor(RULE, sink, link=link, clock=clock)


async def run(monitors: list[AlertMonitor], clock: Clock, burst_at: int) -> list[list]:
    """Ten minutes: two requests a minute from each process, then a burst of 60 at
    ``burst_at``; the alerts of each process."""
    raised: list[list] = [[] for _ in monitors]
    for minute in range(burst_at + 1):
        n = 60 if minute == burst_at else 2
        for m in monitors:
            for _ in range(n):
                m.feed.count("key_a", "ten_a", "prn_a", "10.0.0.1", 30, 200)
        clock.now = T0 + (minute + 1) * 60
        for i, m in enumerate(monitors):
            raised[i] += await m.tick()
    return raised


async def test_each_alert_is_an_audit_record(audit: AuditLog) -> None:
    clock = Clock()
    m = monitor(audit, clock)
    (alerts,) = await run([m], clock, burst_at=8)
    assert {(a.scope, a.signal) for a in alerts} == {("key", "requests"), ("tenant", "requests")}
    await asyncio.to_thread(audit.flush, 30)
    with audit.db.session() as s:
        rows = s.scalars(select(AuditRecord).where(AuditRecord.action == "alert.raised")).all()
    by_resource = {r.resource: r for r in rows}
    assert set(by_resource) == {"key:key_a", "tenant:ten_a"}
    key = by_resource["key:key_a"]
    assert key.key_id == "key_a" and key.tenant_id == "ten_a" and key.actor == "prn_a"
    assert key.detail["signal"] == "requests" and key.detail["value"] == 60
    assert key.detail["id"] == next(a.id for a in alerts if a.scope == "key")
    assert m.sink.metrics.raised.labels("key", "requests")._value.get() == 1


async def test_processes_sharing_redis_raise_one_alert(audit: AuditLog, redis_server) -> None:
    clock = Clock()
    links = [RedisLink(redis_server.url, prefix="alerts-test:") for _ in range(2)]
    try:
        both = await run([monitor(audit, clock, link) for link in links], clock, burst_at=8)
        assert sorted(len(a) for a in both) == [0, 2]  # one process: key and tenant
        redis_server.stop()  # away: each process raises its own
        clock.now += 7200
        apart = await run([monitor(audit, clock, link) for link in links], clock, burst_at=8)
        assert [len(a) for a in apart] == [2, 2]
    finally:
        for link in links:
            await link.close()
