"""Engine pool end to end: `autoglm serve` routing to real stand-in upstream processes.

One settings file declares the embedded llama.cpp model and upstream models on several
stand-in servers (``python -m autoglm.devtools.standin``), each its own process.
"""

from __future__ import annotations

import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from tests.standin import Standin

from .support import ServerProcess, free_port, sse_events

pytestmark = pytest.mark.e2e

MODEL = "smollm2-135m-instruct"
CHAT = {"messages": [{"role": "user", "content": "hi"}]}


@pytest.fixture(scope="module")
def pool(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    work = tmp_path_factory.mktemp("pool")
    ups = {n: Standin(n, work).start() for n in ("a", "b", "c", "d", "solo", "spare", "keyed")}
    dead = [free_port(), free_port()]

    def inst(name: str, **kw: Any) -> dict[str, Any]:
        return {"url": ups[name].url, "name": name, **kw}

    config = {"models": [
        {"id": MODEL, "engine": "llamacpp"},
        {"id": "weighted", "engine": "vllm", "instances": [inst("a", weight=3), inst("b")]},
        {"id": "pair", "engine": "openai", "max_fails": 2, "fail_timeout_s": 2.0,
         "instances": [inst("c"), inst("d", upstream_model="standin")]},
        {"id": "solo", "engine": "openai", "instances": [inst("solo")]},
        {"id": "keyed", "engine": "openai",
         "instances": [inst("keyed", api_key="upstream-secret-123")]},
        {"id": "dead", "engine": "openai", "max_fails": 1, "fail_timeout_s": 30,
         "instances": [{"url": f"http://127.0.0.1:{p}/v1"} for p in dead]},
        {"id": "probed", "engine": "openai", "max_fails": 1, "fail_timeout_s": 60,
         "probe": {"interval_s": 0.2, "path": "/models", "timeout_s": 0.5},
         "instances": [inst("spare")]},
    ]}
    cfg = work / "pool.yaml"
    cfg.write_text(yaml.safe_dump(config))
    srv = ServerProcess(work, args=["--config", str(cfg)], name="pool",
                        env={"AUTOGLM_UPSTREAM_FIRST_BYTE_TIMEOUT_S": "2",
                             "AUTOGLM_N_THREADS": "1"}).start()
    try:
        yield {"srv": srv, "ups": ups, "work": work}
    finally:
        srv.stop(check=False)
        for s in ups.values():
            s.kill()


def chat(srv: ServerProcess, model: str, **extra: Any) -> httpx.Response:
    with srv.client(auth=True, timeout=15) as http:
        return http.post("/v1/chat/completions", json={"model": model, **CHAT, **extra})


def served_by(resp: httpx.Response) -> str:
    return resp.json()["system_fingerprint"]


def instance(srv: ServerProcess, model: str, name: str) -> dict[str, Any]:
    _, body = srv.readyz()
    return next(i for i in body["checks"][model]["instances"] if i["name"] == name)


def test_one_settings_file_serves_embedded_and_upstream_models_with_same_key(pool) -> None:
    srv = pool["srv"]
    with srv.client(auth=True) as http:
        ids = {m["id"] for m in http.get("/v1/models").json()["data"]}
        assert {MODEL, "weighted", "pair", "solo"} <= ids
        local = http.post("/v1/chat/completions", json={"model": MODEL, **CHAT, "max_tokens": 3})
        assert local.status_code == 200 and local.json()["model"] == MODEL
    up = chat(srv, "weighted")
    assert up.status_code == 200 and served_by(up) in ("a", "b")
    with srv.client(auth=False) as http:  # same key rules
        assert http.post("/v1/chat/completions",
                         json={"model": "weighted", **CHAT}).status_code == 401


def test_upstream_gets_its_own_key_never_the_clients(pool) -> None:
    ups, srv = pool["ups"], pool["srv"]
    assert chat(srv, "keyed").status_code == 200
    assert ups["keyed"].stats()["last_authorization"] == "Bearer upstream-secret-123"
    assert chat(srv, "solo").status_code == 200
    assert ups["solo"].stats()["last_authorization"] is None  # the gateway key stays here
    with srv.client(auth=True) as http:
        engines = http.get("/admin/v1/engines").text
    assert "upstream-secret-123" not in engines
    assert "upstream-secret-123" not in (pool["work"] / "pool.stderr.log").read_text()


def test_weights_are_honoured(pool) -> None:
    got = Counter(served_by(chat(pool["srv"], "weighted")) for _ in range(120))
    assert got["a"] + got["b"] == 120
    assert 80 <= got["a"] <= 100, got  # 3:1 -> 90 / 30


def test_least_connections_avoids_the_slow_instance(pool) -> None:
    ups = pool["ups"]
    ups["c"].control(delay_ms=400)
    before = {n: ups[n].stats()["requests"] for n in ("c", "d")}
    try:
        with ThreadPoolExecutor(6) as ex:
            results = list(ex.map(lambda _: chat(pool["srv"], "pair"), range(60)))
    finally:
        ups["c"].control(delay_ms=0)
    assert all(r.status_code == 200 for r in results)
    c = ups["c"].stats()["requests"] - before["c"]
    d = ups["d"].stats()["requests"] - before["d"]
    assert d > 3 * c, (c, d)  # the fast instance takes the bulk, not half


def test_upstream_model_name_is_rewritten(pool) -> None:
    # d knows the model as "standin"; requests still succeed and are served by it
    got = {served_by(chat(pool["srv"], "pair")) for _ in range(6)}
    assert got == {"c", "d"}


def test_5xx_before_first_byte_is_retried_on_another_instance(pool) -> None:
    ups, srv = pool["ups"], pool["srv"]
    ups["b"].control(mode="error500")
    try:
        results = [chat(srv, "weighted") for _ in range(20)]
    finally:
        ups["b"].control(mode="ok")
    assert [r.status_code for r in results] == [200] * 20
    assert {served_by(r) for r in results} == {"a"}
    assert instance(srv, "weighted", "b")["failures_total"] >= 1
    assert srv.metric("autoglm_upstream_failures_total", model="weighted", instance="b") >= 1
    assert srv.metric("autoglm_upstream_up", model="weighted", instance="a") == 1.0
    assert srv.metric("autoglm_upstream_recent_failures", model="weighted",
                      instance="b") is not None


def test_killed_instance_fails_no_request_and_comes_back(pool) -> None:
    ups, srv = pool["ups"], pool["srv"]
    statuses: list[int] = []
    stop = threading.Event()

    def load() -> None:
        while not stop.is_set():
            statuses.append(chat(srv, "pair").status_code)

    threads = [threading.Thread(target=load) for _ in range(4)]
    for t in threads:
        t.start()
    time.sleep(0.5)
    port = ups["d"].port
    ups["d"].kill()
    time.sleep(1.0)
    state_while_dead = instance(srv, "pair", "d")["state"]
    ups["d"] = Standin("d", pool["work"], port=port).start()
    time.sleep(2.5)  # fail_timeout_s is 2
    stop.set()
    for t in threads:
        t.join(20)
    assert len(statuses) > 40
    assert set(statuses) == {200}, Counter(statuses)
    assert state_while_dead == "down"
    assert instance(srv, "pair", "d")["state"] == "up"
    after = [served_by(chat(srv, "pair")) for _ in range(10)]
    assert "d" in after


def test_no_retry_once_streaming_began(pool) -> None:
    ups, srv = pool["ups"], pool["srv"]
    ups["solo"].control(mode="die_mid_stream")
    before = ups["solo"].stats()["requests"]
    try:
        with srv.client(auth=True, timeout=15) as http, http.stream(
            "POST", "/v1/chat/completions", json={"model": "solo", **CHAT, "stream": True}
        ) as resp:
            assert resp.status_code == 200
            events = sse_events(resp.iter_lines())
    finally:
        ups["solo"].control(mode="ok")
    assert ups["solo"].stats()["requests"] - before == 1  # exactly one attempt
    content = [e for e in events if isinstance(e, dict) and "choices" in e]
    assert len(content) == 2
    assert events[-1]["error"]["code"] == "upstream_error"
    assert "127.0.0.1" not in events[-1]["error"]["message"]


def test_stream_is_passed_through_incrementally(pool) -> None:
    ups, srv = pool["ups"], pool["srv"]
    ups["solo"].control(chunk_delay_ms=250, chunks=4)
    try:
        t0 = time.monotonic()
        arrivals = []
        with srv.client(auth=True, timeout=15) as http, http.stream(
            "POST", "/v1/chat/completions", json={"model": "solo", **CHAT, "stream": True}
        ) as resp:
            for line in resp.iter_lines():
                if line.startswith("data: {"):
                    arrivals.append(time.monotonic() - t0)
    finally:
        ups["solo"].control(chunk_delay_ms=0, chunks=8)
    # 4 content chunks and the last; the PII guard may cut one more where a value could
    # continue ("tok3 " ends in a digit and a space, as a phone number's groups do)
    assert 5 <= len(arrivals) <= 6
    # the upstream spends ~1 s sending; the first chunk arrives long before the last
    assert arrivals[0] < 0.6 and arrivals[-1] - arrivals[0] > 0.6
    gaps = [b - a for a, b in zip(arrivals, arrivals[1:])]
    assert sum(1 for g in gaps if g > 0.1) >= 3, gaps  # arrived in steps, not in one lump


def test_upstream_4xx_stays_4xx_and_hides_the_address(pool) -> None:
    ups, srv = pool["ups"], pool["srv"]
    ups["solo"].control(mode="error400")
    try:
        resp = chat(srv, "solo")
    finally:
        ups["solo"].control(mode="ok")
    assert resp.status_code == 400
    err = resp.json()["error"]
    assert err["message"] == "model 'solo': standin error400" and err["param"] == "messages"
    assert instance(srv, "solo", "solo")["state"] == "up"  # a 4xx is not the upstream's fault


def test_upstream_timeout_is_504(pool) -> None:
    ups, srv = pool["ups"], pool["srv"]
    ups["solo"].control(mode="hang")
    try:
        resp = chat(srv, "solo")
    finally:
        ups["solo"].control(mode="ok")
    assert resp.status_code == 504
    assert resp.json()["error"]["code"] == "upstream_timeout"
    assert "solo" in resp.json()["error"]["message"]


def test_all_instances_down_is_503_with_retry_after(pool) -> None:
    srv = pool["srv"]
    first = chat(srv, "dead")  # both refuse connections: each is ejected (max_fails 1)
    assert first.status_code in (502, 503)
    assert "127.0.0.1" not in first.json()["error"]["message"]
    resp = chat(srv, "dead")
    assert resp.status_code == 503
    assert int(resp.headers["retry-after"]) >= 1
    assert resp.json()["error"]["code"] == "engine_unavailable"
    code, body = srv.readyz()
    assert code == 503 and body["checks"]["dead"]["status"] == "down"
    assert "url" not in body["checks"]["dead"]["instances"][0]  # no addresses, unauthenticated


def test_active_probe_marks_an_instance_down_and_back_without_traffic(pool) -> None:
    ups, srv = pool["ups"], pool["srv"]
    ups["spare"].control(mode="error500")  # probes get 500, no requests are sent
    deadline = time.monotonic() + 5
    while instance(srv, "probed", "spare")["state"] != "down" and time.monotonic() < deadline:
        time.sleep(0.1)
    assert instance(srv, "probed", "spare")["state"] == "down"
    ups["spare"].control(mode="ok")
    deadline = time.monotonic() + 5  # fail_timeout is 60 s: only the probe can bring it back
    while instance(srv, "probed", "spare")["state"] != "up" and time.monotonic() < deadline:
        time.sleep(0.1)
    assert instance(srv, "probed", "spare")["state"] == "up"


def test_admin_add_drain_remove_at_run_time_without_dropping_requests(pool) -> None:
    srv = pool["srv"]
    new = Standin("e", pool["work"]).start()
    try:
        with srv.client(auth=True, timeout=15) as http:
            r = http.post("/admin/v1/models/solo/instances", json={"url": new.url, "name": "e"})
            assert r.status_code == 201 and r.json()["state"] == "up"
            assert {served_by(chat(srv, "solo")) for _ in range(8)} == {"solo", "e"}
            # a slow stream in flight on "e" survives its drain and removal
            new.control(chunk_delay_ms=150, chunks=6)
            assert http.post("/admin/v1/models/solo/instances/solo/drain").status_code == 200
            result: dict[str, Any] = {}  # the stream lands on "e", the only one not drained

            def stream() -> None:
                with srv.client(auth=True, timeout=15) as h2, h2.stream(
                    "POST", "/v1/chat/completions",
                    json={"model": "solo", **CHAT, "stream": True},
                ) as resp:
                    result["status"] = resp.status_code
                    result["events"] = sse_events(resp.iter_lines())

            t = threading.Thread(target=stream)
            t.start()
            time.sleep(0.3)
            assert http.post("/admin/v1/models/solo/instances/solo/resume").json()["state"] == \
                "up"
            assert http.post("/admin/v1/models/solo/instances/e/drain").json()["state"] == \
                "draining"
            assert {served_by(chat(srv, "solo")) for _ in range(5)} == {"solo"}
            removed = http.delete("/admin/v1/models/solo/instances/e")
            assert removed.status_code == 202  # still finishing the stream
            t.join(15)
            assert result["status"] == 200 and result["events"][-1] == "[DONE]"
            assert {e["system_fingerprint"] for e in result["events"][:-1]} == {"e"}
            names = [i["name"] for i in http.get("/admin/v1/engines").json()["data"][
                [d["model"] for d in http.get("/admin/v1/engines").json()["data"]].index("solo")
            ]["instances"]]
            assert names == ["solo"]
            assert http.post("/admin/v1/models/solo/instances",
                             json={"url": "ftp://x"}).status_code == 400
            assert http.post(f"/admin/v1/models/{MODEL}/instances",
                             json={"url": new.url}).status_code == 400
            assert http.post("/admin/v1/models/nope/instances/x/drain").status_code == 404
        import sqlite3

        with sqlite3.connect(srv.workdir / "data" / "autoglm.db") as db:
            acts = [r[0] for r in db.execute(
                "SELECT action FROM audit_log WHERE action LIKE 'engine.instance.%' "
                "ORDER BY seq")]
        assert acts[:5] == ["engine.instance.add", "engine.instance.drain",
                            "engine.instance.resume", "engine.instance.drain",
                            "engine.instance.remove"]
    finally:
        new.kill()


def test_engines_command_prints_the_pool(pool) -> None:
    srv = pool["srv"]
    exe = Path(sys.executable).with_name("autoglm")
    out = subprocess.run([str(exe), "engines", "--url", srv.base_url, "--key", srv.key, "--json"],
                         capture_output=True, text=True, timeout=30, env=srv.env)
    assert out.returncode == 0, out.stderr
    import json

    data = {e["model"]: e for e in json.loads(out.stdout)}
    assert data[MODEL]["engine"] == "llamacpp"
    assert {i["name"] for i in data["weighted"]["instances"]} == {"a", "b"}
    assert data["weighted"]["instances"][0]["url"].startswith("http://127.0.0.1:")
    table = subprocess.run([str(exe), "engines", "--url", srv.base_url, "--key", srv.key],
                           capture_output=True, text=True, timeout=30, env=srv.env)
    assert table.returncode == 0 and "weighted" in table.stdout
    bad = subprocess.run([str(exe), "engines", "--url", srv.base_url, "--key", "nope"],
                         capture_output=True, text=True, timeout=30, env=srv.env)
    assert bad.returncode == 1 and "401" in bad.stderr
