"""Every error of the serving core, in the OpenAI shape, with the right status."""

from __future__ import annotations

import pytest

from tests.conftest import MODEL, AppClient

pytestmark = pytest.mark.model


def assert_openai_error(resp, status: int, code: str | None = None, param: str | None = None):
    assert resp.status_code == status, resp.text
    assert resp.headers["content-type"].startswith("application/json")
    body = resp.json()
    assert set(body) == {"error"}
    err = body["error"]
    assert set(err) == {"message", "type", "param", "code"}
    assert isinstance(err["message"], str) and err["message"]
    assert "Traceback" not in err["message"]
    if code is not None:
        assert err["code"] == code
    if param is not None:
        assert err["param"] == param
    return err


def chat(**extra):
    body = {"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4}
    body.update(extra)
    return body


async def test_missing_key_is_401(api: AppClient) -> None:
    resp = await api.http.post("/v1/chat/completions", json=chat())
    assert_openai_error(resp, 401, "invalid_api_key")


async def test_wrong_and_malformed_keys_get_the_same_401(api: AppClient) -> None:
    messages = set()
    for header in ("Bearer wrong", "Bearer agk_" + "A" * 49, "Basic abc", "Bearer "):
        resp = await api.http.get("/v1/models", headers={"Authorization": header})
        messages.add(assert_openai_error(resp, 401, "invalid_api_key")["message"])
    assert len(messages) == 1


async def test_probes_need_no_key_and_show_nothing_without_one(api: AppClient) -> None:
    assert (await api.http.get("/healthz")).status_code == 200
    bare = await api.http.get("/readyz")
    assert bare.status_code == 200 and bare.json() == {"status": "ready"}  # no models, no pids
    assert "checks" in (await api.get("/readyz")).json()  # a key that may read engines: all
    refused = await api.http.get("/metrics")
    assert_openai_error(refused, 401, "invalid_api_key")
    metrics = await api.get("/metrics")
    assert metrics.status_code == 200 and "autoglm_requests_total" in metrics.text
    guessed = await api.http.get("/metrics", headers={"Authorization": "Bearer agk_nope"})
    assert guessed.status_code == 401


async def test_unknown_route_is_404(api: AppClient) -> None:
    assert_openai_error(await api.get("/v1/nothing-here"), 404)
    assert_openai_error(await api.get("/not-even-v1"), 404)


async def test_unknown_model_is_404(api: AppClient) -> None:
    err = assert_openai_error(await api.post("/v1/chat/completions", chat(model="gpt-9")), 404,
                              "model_not_found", "model")
    assert "gpt-9" in err["message"]
    assert_openai_error(await api.get("/v1/models/gpt-9"), 404, "model_not_found")


async def test_wrong_method_is_405(api: AppClient) -> None:
    resp = await api.get("/v1/chat/completions")
    assert_openai_error(resp, 405, "method_not_allowed")
    assert "POST" in resp.headers.get("allow", "")


async def test_body_over_limit_is_413(api: AppClient) -> None:
    big = chat(messages=[{"role": "user", "content": "x" * 5000}])
    assert_openai_error(await api.post("/v1/chat/completions", big), 413, "request_too_large")


async def test_chunked_body_over_limit_is_413(api: AppClient) -> None:
    async def gen():
        for _ in range(10):
            yield b" " * 1000

    resp = await api.http.post("/v1/chat/completions", content=gen(), headers=api.auth)
    assert_openai_error(resp, 413, "request_too_large")


async def test_malformed_json_is_400(api: AppClient) -> None:
    resp = await api.http.post("/v1/chat/completions", content=b'{"model": ', headers=api.auth)
    err = assert_openai_error(resp, 400)
    assert "parse the JSON" in err["message"]


async def test_non_object_body_is_400(api: AppClient) -> None:
    resp = await api.http.post("/v1/chat/completions", content=b"[1, 2]", headers=api.auth)
    assert_openai_error(resp, 400)


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"messages": [{"role": "user", "content": "hi"}]}, "model"),
        (chat(messages=[]), "messages"),
        (chat(messages="hello"), "messages"),
        (chat(messages=[{"role": "wizard", "content": "hi"}]), "messages.0.role"),
        (chat(max_tokens="5"), "max_tokens"),
        (chat(max_tokens=0), "max_tokens"),
        (chat(max_completion_tokens=-1), "max_completion_tokens"),
        (chat(temperature=3), "temperature"),
        (chat(temperature="hot"), "temperature"),
        (chat(top_p=0), "top_p"),
        (chat(stream="yes"), "stream"),
        (chat(stop=["a", "b", "c", "d", "e"]), "stop"),
        (chat(tool_choice="required"), "tool_choice"),  # with no tools
        (chat(response_format={"type": "json_schema"}), "response_format.json_schema"),
        (chat(tools=[{"type": "function", "function": {"name": "a b"}}]),
         "tools.0.function.name"),
    ],
)
async def test_bad_values_are_400_naming_the_field(api: AppClient, body, param) -> None:
    assert_openai_error(await api.post("/v1/chat/completions", body), 400, param=param)


@pytest.mark.parametrize(
    ("extra", "param"),
    [
        ({"n": 2}, "n"),
        ({"functions": [{"name": "f"}]}, "functions"),
        ({"logprobs": True}, "logprobs"),
    ],
)
async def test_unsupported_values_are_400_naming_the_parameter(api, extra, param) -> None:
    err = assert_openai_error(await api.post("/v1/chat/completions", chat(**extra)), 400,
                              "unsupported_parameter", param)
    assert param in err["message"]


async def test_unknown_fields_are_ignored(api: AppClient) -> None:
    resp = await api.post("/v1/chat/completions", chat(some_future_field={"a": 1}, n=1))
    assert resp.status_code == 200, resp.text


async def test_prompt_longer_than_context_names_both_numbers(api: AppClient) -> None:
    long = " ".join(["word"] * 700)  # ~700 tokens against a 512-token slot
    resp = await api.post("/v1/completions", {"model": MODEL, "prompt": long})
    err = assert_openai_error(resp, 400, "context_length_exceeded", "prompt")
    assert "512" in err["message"]
    tokens = [int(t) for t in err["message"].replace(".", " ").split() if t.isdigit()]
    assert any(t > 512 for t in tokens), err["message"]


async def test_max_tokens_beyond_context_is_400(api: AppClient) -> None:
    resp = await api.post("/v1/chat/completions", chat(max_tokens=5000))
    err = assert_openai_error(resp, 400, "context_length_exceeded", "max_tokens")
    assert "512" in err["message"] and "5000" in err["message"]


async def test_completions_errors(api: AppClient) -> None:
    resp = await api.post("/v1/completions", {"model": MODEL, "prompt": ["a", "b"]})
    assert_openai_error(resp, 400, "unsupported_parameter", "prompt")
    resp = await api.post("/v1/completions", {"model": MODEL, "prompt": "a", "echo": True})
    assert_openai_error(resp, 400, "unsupported_parameter", "echo")
    resp = await api.post("/v1/completions", {"model": MODEL})
    assert_openai_error(resp, 400, param="prompt")


async def test_the_server_makes_its_request_id_and_keeps_the_clients_beside(
        api: AppClient) -> None:
    for header in ("X-Request-ID", "X-Client-Request-Id"):
        resp = await api.get("/v1/models", headers={header: "abc-123"})
        assert resp.headers["x-request-id"].startswith("req_")
        assert resp.headers["x-client-request-id"] == "abc-123"
    resp = await api.get("/v1/models", headers={"X-Request-ID": "bad id\twith junk"})
    assert resp.headers["x-request-id"].startswith("req_")
    assert "x-client-request-id" not in resp.headers
    resp = await api.http.get("/v1/models")  # errors carry one too
    assert resp.headers["x-request-id"].startswith("req_")


async def test_repeated_bad_keys_from_one_address_get_429(tmp_path) -> None:
    from tests.conftest import make_settings, start_app

    settings = make_settings(tmp_path / "d", auth_failure_limit=2, auth_failure_window_s=30)
    async for client in start_app(settings):
        bad = {"Authorization": "Bearer agk_" + "q" * 49}
        for _ in range(2):
            r = await client.http.get("/v1/models", headers=bad)
            assert r.status_code == 401
        for path in ("/v1/models", "/v1/chat/completions"):  # edge and pipeline alike
            r = await client.http.post(path, json={}, headers=client.auth) if "chat" in path \
                else await client.http.get(path, headers=client.auth)
            err = assert_openai_error(r, 429, "too_many_auth_failures")
            assert "address" in err["message"] and int(r.headers["retry-after"]) >= 1
