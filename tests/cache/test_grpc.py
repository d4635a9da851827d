"""The response cache over gRPC (``x-autoglm-cache`` metadata), in front of a stand-in
upstream: the second identical call, unary or streamed, never reaches the upstream."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from autoglm.rpc.gen.autoglm.v1 import inference_pb2 as pb
from autoglm.rpc.gen.autoglm.v1 import inference_pb2_grpc as pb_grpc
from tests.cache.support import run_app
from tests.conftest import ADMIN_KEY, make_settings
from tests.standin import Standin

UP = "cache-grpc-upstream"
AUTH = ("authorization", f"Bearer {ADMIN_KEY}")


@pytest.fixture
def standin(tmp_path: Path) -> Iterator[Standin]:
    st = Standin("cache-grpc", tmp_path).start()
    st.control(say="Fine weather.", say_chunk=4)
    yield st
    st.kill()


async def test_grpc_calls_use_the_cache(tmp_path: Path, standin: Standin) -> None:
    settings = make_settings(tmp_path / "data", grpc_port=0, models=[
        {"id": UP, "engine": "openai", "instances": [{"url": standin.url}]}])
    req = pb.ChatCompletionRequest(model=UP, max_tokens=8, temperature=0,
                                   messages=[pb.ChatMessage(role="user", content="Hi")])
    async for client in run_app(settings):
        port = client.app.state.rpc.port
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            stub = pb_grpc.InferenceStub(channel)
            use = (AUTH, ("x-autoglm-cache", "use"))
            first = await stub.ChatCompletion(req, metadata=use, timeout=30)
            again = await stub.ChatCompletion(req, metadata=use, timeout=30)
            chunks = [c async for c in stub.ChatCompletionStream(req, metadata=use,
                                                                  timeout=30)]
            plain = await stub.ChatCompletion(req, metadata=(AUTH,), timeout=30)
        text = first.choices[0].message.content
        assert text == "Fine weather." == again.choices[0].message.content
        assert "".join(c.choices[0].delta.content for c in chunks if c.choices) == text
        assert again.id != first.id and again.usage.total_tokens == first.usage.total_tokens
        assert plain.choices[0].message.content == text
        assert standin.stats()["requests"] == 2  # the first call, and the one that did not ask
