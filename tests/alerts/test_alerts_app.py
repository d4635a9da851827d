"""Usage alerts through a real app (the bundled model, one-second buckets): a key used at its
usual pace, then a burst of it from a new address, raises alerts that arrive on a webhook
receiver on 127.0.0.1 (signed; its first answer is a 500, so the delivery is retried), are
audit records listed by ``GET /admin/v1/alerts``, and are counted in ``/metrics``; a
tenant whose daily quota is set below what it used alerts once for the 80% threshold."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

import httpx
import orjson
import pytest
from prometheus_client.parser import text_string_to_metric_families

from autoglm.alerts.quota import DAY_S, tokens_today
from autoglm.alerts.webhook import verify
from tests.alerts.receiver import Receiver, receiver
from tests.conftest import ADMIN_KEY, MODEL, make_settings, start_app
from tests.console.support import ConsoleClient

pytestmark = pytest.mark.model

SECRET = b"alerts-test-secret-0123456789abcdef"
LEAKED_FROM = "203.0.113.7"
CHAT = {"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 1}


@pytest.fixture(scope="module")
async def world(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[dict]:
    left = DAY_S - time.time() % DAY_S
    if left < 120:  # the quota's day must not end during the test
        await asyncio.sleep(left + 1)
    data = tmp_path_factory.mktemp("alerts")
    secret = data / "webhook-secret"
    secret.write_bytes(SECRET + b"\n")
    with receiver(statuses=[500]) as hook:
        settings = make_settings(
            data / "data", alerts_bucket_s=1.0, alerts_window_s=30.0, alerts_warmup_s=3.0,
            alerts_cooldown_s=600.0, alerts_min_count=8, alerts_webhook_url=hook.url,
            alerts_webhook_secret_file=secret, alerts_webhook_retries=3,
            alerts_webhook_backoff_s=0.05)
        async for client in start_app(settings):
            post = client.post
            tenant = (await post("/admin/v1/tenants", {"name": "shop"})).json()["id"]
            r = await client.http.put(f"/admin/v1/tenants/{tenant}/models",
                                      json={"models": [MODEL]}, headers=client.auth)
            assert r.status_code == 200, r.text
            project = (await post(f"/admin/v1/tenants/{tenant}/projects",
                                  {"name": "main", "allowed_models": [MODEL]})).json()["id"]
            prn = (await post(f"/admin/v1/tenants/{tenant}/principals", {"name": "app"})).json()
            r = await post(f"/admin/v1/principals/{prn['id']}/bindings",
                           {"role": "member", "project_id": project})
            assert r.status_code == 201, r.text
            key = (await post(f"/admin/v1/principals/{prn['id']}/keys", {})).json()
            yield {"client": client, "hook": hook, "tenant": tenant, "project": project,
                   "principal": prn["id"], "key": key["key"], "key_id": key["id"]}


def headers(w: dict) -> dict[str, str]:
    return {"Authorization": f"Bearer {w['key']}", "OpenAI-Project": w["project"]}


async def wait_for(hook: Receiver, found, timeout_s: float = 60.0) -> list[dict]:
    """The bodies the receiver accepted (200), once ``found(bodies)`` is true."""
    deadline = time.monotonic() + timeout_s
    while True:
        bodies = [orjson.loads(g.body) for g in hook.got if g.status == 200]
        if found(bodies) or time.monotonic() > deadline:
            return bodies
        await asyncio.sleep(0.1)


async def test_a_key_leak_burst_raises_signed_alerts_records_and_metrics(world) -> None:
    client, hook = world["client"], world["hook"]
    app = client.app
    # its usual pace: a request a second, from its usual address, past the warm-up
    for _ in range(6):
        started = time.monotonic()
        r = await client.http.post("/v1/chat/completions", json=CHAT, headers=headers(world))
        assert r.status_code == 200, r.text
        await asyncio.sleep(max(0.0, 1.0 - (time.monotonic() - started)))
    # then thirty at once from an address it never used
    transport = httpx.ASGITransport(app=app, client=(LEAKED_FROM, 40_000))
    async with httpx.AsyncClient(transport=transport, base_url="http://test",
                                 timeout=120) as leaked:
        answers = await asyncio.gather(*(leaked.post("/v1/chat/completions", json=CHAT,
                                                     headers=headers(world))
                                         for _ in range(30)))
    assert all(a.status_code == 200 for a in answers), [a.text for a in answers][:2]

    bodies = await wait_for(hook, lambda b: {"requests", "new_address"} <= {
        x["signal"] for x in b if x["scope"] == "key"})
    mine = {b["signal"]: b for b in bodies if b["subject"] == world["key_id"]}
    assert {"requests", "new_address"} <= set(mine), bodies
    leak = mine["new_address"]
    assert leak["new_addresses"] == [LEAKED_FROM] and leak["value"] >= 8
    assert leak["tenant_id"] == world["tenant"] and leak["principal_id"] == world["principal"]
    assert leak["value"] >= leak["threshold"] and "new addresses" in leak["rule"]
    # every delivery signed; the first was answered 500 and tried again, same delivery id
    for got in hook.got:
        h = got.headers
        assert verify(SECRET, h["x-autoglm-timestamp"], got.body, h["x-autoglm-signature"])
    assert hook.got[0].status == 500 and hook.got[1].status == 200
    assert hook.got[0].headers["x-autoglm-delivery"] == hook.got[1].headers["x-autoglm-delivery"]

    # audit records, read back by the admin API (the address opened from its sealed field)
    await asyncio.to_thread(app.state.audit.flush, 30)
    listed = (await client.get("/admin/v1/alerts")).json()
    by_signal = {a["signal"]: a for a in listed["data"] if a["subject"] == world["key_id"]}
    assert by_signal["new_address"]["id"] == leak["id"]
    assert by_signal["new_address"]["new_addresses"] == [LEAKED_FROM]
    assert by_signal["requests"]["id"] == mine["requests"]["id"]
    records = (await client.get("/admin/v1/audit?action=alert.raised")).json()["data"]
    rec = next(r for r in records if r["detail"]["id"] == leak["id"])
    assert rec["key_id"] == world["key_id"] and rec["tenant_id"] == world["tenant"]
    assert rec["actor"] == world["principal"] and rec["client_addr"] == LEAKED_FROM
    assert rec["resource"] == f"key:{world['key_id']}"

    # shown in the web console, newest first, with the address the key leaked to
    console = ConsoleClient(app)
    try:
        assert (await console.sign_in(ADMIN_KEY)).status_code == 303
        page = (await console.get("/console/alerts")).text
    finally:
        await console.close()
    assert 'href="/console/alerts"' in page  # in the menu
    row = page.split(world["key_id"], 1)[0].rsplit("<tr>", 1)[1] + page.split(
        world["key_id"], 1)[1].split("</tr>", 1)[0]
    assert "new_address" in page and LEAKED_FROM in page, page[-3000:]
    assert "<td" in row

    # and counted in the metrics
    text = (await client.get("/metrics")).text
    samples = {(s.name, s.labels.get("scope"), s.labels.get("signal"), s.labels.get("result")):
               s.value for f in text_string_to_metric_families(text) for s in f.samples}
    assert samples[("autoglm_alerts_total", "key", "new_address", None)] >= 1
    assert samples[("autoglm_alerts_total", "key", "requests", None)] >= 1
    assert samples[("autoglm_alert_webhook_total", None, None, "retried")] >= 1
    assert samples[("autoglm_alert_webhook_total", None, None, "delivered")] >= 2


async def test_a_tenant_nearing_its_quota_alerts_once(world) -> None:
    client, hook = world["client"], world["hook"]
    app = client.app
    await asyncio.to_thread(app.state.audit.flush, 30)
    used = (await asyncio.to_thread(tokens_today, app.state.db, time.time()))[world["tenant"]]
    quota = int(used / 0.9)  # 90% used: past 80%, not 95%
    r = await client.http.put(f"/admin/v1/limits/tenant/{world['tenant']}",
                              json={"tokens_per_day": quota}, headers=client.auth)
    assert r.status_code == 200, r.text
    bodies = await wait_for(hook, lambda b: any(x["signal"] == "quota" for x in b))
    quotas = [b for b in bodies if b["signal"] == "quota"]
    assert len(quotas) == 1, quotas
    q = quotas[0]
    assert q["scope"] == "tenant" and q["subject"] == world["tenant"]
    assert q["threshold"] == 0.8 and q["tokens_per_day"] == quota
    assert q["used_tokens"] >= used and 0.8 <= q["value"] < 0.95
    await asyncio.sleep(2.5)  # two more evaluations: nothing new
    assert len([b for b in await wait_for(hook, lambda b: True, 0)
                if b["signal"] == "quota"]) == 1
