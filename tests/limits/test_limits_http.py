"""Limits over HTTP on the real model: 429 in the OpenAI shape with Retry-After, and
OpenAI's x-ratelimit-* headers on every response of a limited caller; with Redis the
limit is shared, and Redis going away leaves inference running on per-process limits."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import pytest

from tests.conftest import MODEL, AppClient, make_settings, start_app
from tests.limits.conftest import WINDOW_S
from tests.redis_server import RedisServer

pytestmark = pytest.mark.model


def chat(**kw: Any) -> dict[str, Any]:
    return {"model": MODEL, "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 2,
            **kw}


@pytest.fixture
async def limited(tmp_path) -> AsyncIterator[AppClient]:  # noqa: ANN001
    settings = make_settings(tmp_path / "data", rate_limit_window_s=WINDOW_S,
                             rate_limits={"key": {"requests_per_minute": 3,
                                                  "tokens_per_minute": 10_000}})
    async for client in start_app(settings):
        yield client


async def test_429_in_the_openai_shape_and_headers_on_every_answer(limited: AppClient) -> None:
    first = await limited.post("/v1/chat/completions", chat())
    assert first.status_code == 200
    h = first.headers
    assert (h["x-ratelimit-limit-requests"], h["x-ratelimit-remaining-requests"]) == ("3", "2")
    assert h["x-ratelimit-limit-tokens"] == "10000"
    assert int(h["x-ratelimit-remaining-tokens"]) < 10_000
    assert h["x-ratelimit-reset-requests"].endswith("s")
    streamed = await limited.post("/v1/chat/completions", chat(stream=True))
    assert streamed.status_code == 200 and streamed.headers["x-ratelimit-remaining-requests"] == "1"
    await limited.post("/v1/chat/completions", chat())
    refused = await limited.post("/v1/chat/completions", chat())
    assert refused.status_code == 429
    err = refused.json()["error"]
    assert err["type"] == "rate_limit_error" and err["code"] == "rate_limit_exceeded"
    assert "requests per minute" in err["message"]
    assert 1 <= int(refused.headers["retry-after"]) <= WINDOW_S
    assert refused.headers["x-ratelimit-remaining-requests"] == "0"
    assert refused.headers["x-request-id"]  # the usual headers too
    models = await limited.get("/v1/models")  # not an inference: not counted
    assert models.status_code == 200


async def test_tokens_reserved_by_max_tokens(limited: AppClient) -> None:
    too_big = await limited.post("/v1/chat/completions", chat(max_tokens=20_000))
    assert too_big.status_code == 429
    assert "lower max_tokens" in too_big.json()["error"]["message"]


async def test_shared_through_redis_and_inference_survives_its_outage(
        tmp_path, redis_server: RedisServer) -> None:  # noqa: ANN001
    settings = make_settings(tmp_path / "data", redis_url=redis_server.url,
                             rate_limit_window_s=WINDOW_S,
                             rate_limits={"key": {"requests_per_minute": 4}})
    async for client in start_app(settings):
        assert (await client.post("/v1/chat/completions", chat())).status_code == 200
        redis = client.app.state.redis
        keys = await redis.client.keys(redis.key("rl", "*"))
        assert keys  # the budget was leased from Redis
        redis_server.stop()
        codes = [(await client.post("/v1/chat/completions", chat())).status_code
                 for _ in range(4)]
        assert codes == [200, 200, 200, 429]  # per-process limits while it is away
        assert redis.down
        ready = await client.get("/readyz")
        assert ready.status_code == 200 and ready.json()["status"] == "degraded"
        assert ready.json()["checks"]["redis"]["status"] == "degraded"
        redis_server.start()
        await asyncio.sleep(redis.retry_s + 0.1)  # then the next call probes, and finds it
        ready = await client.get("/readyz")
        assert ready.json()["status"] == "ready" and not redis.down


async def test_over_grpc_the_headers_are_trailing_metadata(tmp_path) -> None:  # noqa: ANN001
    import grpc

    from autoglm.rpc.gen.autoglm.v1 import inference_pb2 as pb
    from autoglm.rpc.gen.autoglm.v1 import inference_pb2_grpc as pb_grpc
    from tests.conftest import ADMIN_KEY

    settings = make_settings(tmp_path / "data", grpc_port=0, rate_limit_window_s=WINDOW_S,
                             rate_limits={"key": {"requests_per_minute": 1}})
    req = pb.ChatCompletionRequest(model=MODEL, max_tokens=1,
                                   messages=[pb.ChatMessage(role="user", content="Hi")])
    auth = (("authorization", f"Bearer {ADMIN_KEY}"),)
    async for client in start_app(settings):
        port = client.app.state.rpc.port
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            stub = pb_grpc.InferenceStub(channel)
            call = stub.ChatCompletion(req, metadata=auth, timeout=60)
            await call
            trailing = dict(await call.trailing_metadata())
            assert trailing["x-ratelimit-remaining-requests"] == "0"
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await stub.ChatCompletion(req, metadata=auth, timeout=60)
            err = caught.value
            assert err.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
            md = dict(err.trailing_metadata())
            assert md["x-openai-error-code"] == "rate_limit_exceeded" and int(md["retry-after"]) >= 1
            assert md["x-ratelimit-limit-requests"] == "1"
