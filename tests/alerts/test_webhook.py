"""The alert webhook against a real HTTP receiver on 127.0.0.1: signed JSON, retried on
5xx and connection errors with backoff, never retried on a refusal, and a bounded queue
that drops (and counts) what a dead receiver cannot take."""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import Callable

import orjson
from prometheus_client import CollectorRegistry

from autoglm.alerts.alert import Alert
from autoglm.alerts.sink import AlertMetrics
from autoglm.alerts.webhook import Webhook, read_secret, sign, verify
from tests.alerts.receiver import receiver

SECRET = b"0123456789abcdef0123456789abcdef"


def alert() -> Alert:
    return Alert(scope="key", subject="key_0a1b2c3d4e5f6789", signal="new_address",
                 value=120.0, baseline=3.0, threshold=40.0, spread=2.0, peak=8.0,
                 rule="requests from new addresses: ...", at=1_700_000_040.0, bucket_s=60.0,
                 tenant_id="ten_0a1b2c3d4e5f6789", key_id="key_0a1b2c3d4e5f6789",
                 principal_id="prn_0a1b2c3d4e5f6789", addresses=("203.0.113.7",))


def results() -> tuple[list[str], AlertMetrics, Callable[[str], None]]:
    """What the webhook reported, in order, and the metrics it counted them in."""
    seen: list[str] = []
    metrics = AlertMetrics(CollectorRegistry())

    def note(result: str) -> None:
        seen.append(result)
        metrics.webhook_result(result)

    return seen, metrics, note


async def until(done: Callable[[], bool], timeout_s: float = 20.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not done() and time.monotonic() < deadline:
        await asyncio.sleep(0.02)


async def test_an_alert_arrives_signed_and_a_failed_try_is_retried() -> None:
    seen, metrics, note = results()
    with receiver(statuses=[503]) as r:
        hook = Webhook(r.url, SECRET, retries=3, backoff_s=0.01, results=note)
        await hook.start()
        try:
            assert hook.enqueue(alert().payload())
            await until(lambda: "delivered" in seen or "failed" in seen)
            got = r.got
        finally:
            await hook.stop()
    assert [g.status for g in got] == [503, 200]
    assert seen == ["retried", "delivered"]
    first, second = got
    assert first.body == second.body
    assert first.headers["x-autoglm-delivery"] == second.headers["x-autoglm-delivery"]
    h = second.headers
    assert h["content-type"] == "application/json" and h["x-autoglm-event"] == "alert.raised"
    assert verify(SECRET, h["x-autoglm-timestamp"], second.body, h["x-autoglm-signature"])
    assert h["x-autoglm-signature"] == sign(SECRET, h["x-autoglm-timestamp"], second.body)
    body = orjson.loads(second.body)
    assert body["id"] == h["x-autoglm-delivery"] and body["signal"] == "new_address"
    assert body["new_addresses"] == ["203.0.113.7"] and body["ts"].endswith("+00:00")
    assert metrics.webhook.labels("delivered")._value.get() == 1


async def test_a_refusal_is_not_retried() -> None:
    seen, _, note = results()
    with receiver(statuses=[400]) as r:
        hook = Webhook(r.url, SECRET, retries=3, backoff_s=0.01, results=note)
        await hook.start()
        try:
            assert await hook.deliver(alert().payload()) is False
        finally:
            await hook.stop()
        assert len(r.got) == 1
    assert seen == ["failed"]


async def test_a_dead_receiver_costs_a_bounded_queue_and_nothing_else() -> None:
    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    seen, metrics, note = results()
    hook = Webhook(f"http://127.0.0.1:{port}/x", SECRET, retries=2, backoff_s=0.01,
                   timeout_s=1.0, queue_max=3, results=note)
    await hook.start()
    try:
        queued = [hook.enqueue(alert().payload()) for _ in range(10)]
        assert queued.count(False) >= 6  # at most 3 waiting (and 1 being tried)
        await until(lambda: seen.count("failed") >= queued.count(True))
    finally:
        await hook.stop()
    assert seen.count("dropped") == queued.count(False)
    assert seen.count("failed") == queued.count(True)
    assert seen.count("retried") == 2 * queued.count(True)
    assert metrics.webhook.labels("dropped")._value.get() == queued.count(False)


def test_signatures_are_checked_with_the_secret_and_the_time() -> None:
    body = b'{"id":"alr_1"}'
    now = 1_700_000_000
    sig = sign(SECRET, str(now), body)
    assert sig.startswith("sha256=") and len(sig) == 7 + 64
    assert verify(SECRET, str(now), body, sig, now=now + 10)
    assert not verify(b"another secret of sixteen+", str(now), body, sig, now=now)
    assert not verify(SECRET, str(now), body + b" ", sig, now=now)
    assert not verify(SECRET, str(now), body, sig, now=now + 301)  # a replay, too late
    assert not verify(SECRET, "12a", body, sig, now=now)


def test_the_secret_file_must_hold_a_real_secret(tmp_path) -> None:
    import pytest

    from autoglm.errors import ConfigError

    f = tmp_path / "secret"
    f.write_bytes(SECRET + b"\n")
    assert read_secret(f) == SECRET
    f.write_bytes(b"short\n")
    with pytest.raises(ConfigError, match="at least 16 bytes"):
        read_secret(f)
    with pytest.raises(ConfigError, match="cannot be read"):
        read_secret(tmp_path / "missing")
    assert SECRET.decode() not in repr(Webhook("http://h:1/p?token=x", SECRET))
    assert "token" not in repr(Webhook("http://h:1/p?token=x", SECRET))


def test_settings_refuse_an_unsigned_webhook_and_the_app_a_missing_secret(tmp_path) -> None:
    import pytest

    from autoglm.api.app import create_app
    from autoglm.errors import ConfigError
    from autoglm.settings import load_settings
    from tests.conftest import make_settings

    with pytest.raises(ConfigError, match="needs alerts_webhook_secret_file"):
        load_settings(alerts_webhook_url="https://siem.example.com/hook")
    settings = make_settings(tmp_path / "d", alerts_webhook_url="https://siem.example.com/h",
                             alerts_webhook_secret_file=tmp_path / "missing")
    with pytest.raises(ConfigError, match="cannot be read"):
        create_app(settings, engines={})
    assert "s3cr3t" not in str(load_settings(
        alerts_webhook_url="https://h/x?token=s3cr3t",
        alerts_webhook_secret_file=tmp_path / "s").masked())
    off = create_app(make_settings(tmp_path / "off", alerts_enabled=False), engines={})
    assert off.state.alerts is None and "alerts" not in off.state.service.names
    on = create_app(make_settings(tmp_path / "on"), engines={})
    assert on.state.service.names[-2:] == ["alerts", "audit"]
    for app in (off, on):
        app.state.audit.close()
        app.state.db.close()
