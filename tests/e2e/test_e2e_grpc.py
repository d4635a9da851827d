"""gRPC beside REST: `autoglm serve --grpc-port` driven by a real grpc client.

One server with one slot (so a slot left busy blocks the next call visibly), with the same
admin key as REST; a second one with TLS.
"""

from __future__ import annotations

import socket
import ssl
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import orjson
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from autoglm.rpc.gen.autoglm.v1 import inference_pb2 as pb
from autoglm.rpc.gen.autoglm.v1 import inference_pb2_grpc as pb_grpc

from .support import ADMIN_KEY, MODEL, ServerProcess

pytestmark = pytest.mark.e2e

SERVICE = "autoglm.v1.Inference"
AUTH = (("authorization", f"Bearer {ADMIN_KEY}"),)
TIMEOUT_S = 30.0
COUNTING = "1, 2, 3, 4, 5, 6, 7, 8, 9, 10,"  # the model keeps counting: no early stop


@pytest.fixture(scope="module")
def srv(start_server, stop_server) -> Iterator[ServerProcess]:
    s = start_server("grpc", grpc=True, args=["--slots", "1"])
    yield s
    stop_server(s)


@pytest.fixture(scope="module")
def channel(srv: ServerProcess) -> Iterator[grpc.Channel]:
    with grpc.insecure_channel(srv.grpc_target) as ch:
        grpc.channel_ready_future(ch).result(timeout=10)
        yield ch


@pytest.fixture
def stub(channel: grpc.Channel) -> pb_grpc.InferenceStub:
    return pb_grpc.InferenceStub(channel)


def chat(text: str = "Name three colours.", **kw: Any) -> pb.ChatCompletionRequest:
    kw = {"model": MODEL, "max_tokens": 16, "temperature": 0, **kw}
    return pb.ChatCompletionRequest(messages=[pb.ChatMessage(role="user", content=text)], **kw)


def openai_error(err: grpc.RpcError, code: grpc.StatusCode) -> dict[str, Any]:
    """The call failed with ``code``, the OpenAI error in its details; returns ``error``."""
    assert err.code() == code, (err.code(), err.details())
    body = orjson.loads(err.details())
    assert set(body) == {"error"} and set(body["error"]) == {"message", "type", "param", "code"}
    assert "Traceback" not in body["error"]["message"]
    trailers = dict(err.trailing_metadata() or ())
    if body["error"]["code"]:
        assert trailers["x-openai-error-code"] == body["error"]["code"]
    return body["error"]


def test_streamed_chat_with_the_rest_admin_key(srv: ServerProcess,
                                               stub: pb_grpc.InferenceStub) -> None:
    call = stub.ChatCompletionStream(chat(), metadata=(*AUTH, ("x-request-id", "grpc-e2e-1")),
                                     timeout=TIMEOUT_S)
    chunks = list(call)
    md = dict(call.initial_metadata())
    assert md["x-client-request-id"] == "grpc-e2e-1" and md["x-request-id"].startswith("req_")
    *answer, last = chunks
    assert answer[0].choices[0].delta.role == "assistant"
    assert answer[-1].choices[0].finish_reason in ("stop", "length")
    assert len({c.id for c in chunks}) == 1 and chunks[0].id.startswith("chatcmpl-")
    text = "".join(c.choices[0].delta.content for c in answer)
    assert not last.choices and last.usage.completion_tokens > 0  # the last one: usage only
    assert last.usage.total_tokens == last.usage.prompt_tokens + last.usage.completion_tokens
    # the same service as REST: the same answer at temperature 0
    with srv.openai() as client:
        rest = client.chat.completions.create(
            model=MODEL, messages=[{"role": "user", "content": "Name three colours."}],
            max_tokens=16, temperature=0)
    assert text == rest.choices[0].message.content
    assert last.usage.completion_tokens == rest.usage.completion_tokens


def test_unary_chat_and_completions(stub: pb_grpc.InferenceStub) -> None:
    answer = stub.ChatCompletion(chat(max_tokens=8), metadata=AUTH, timeout=TIMEOUT_S)
    (choice,) = answer.choices
    assert choice.message.role == "assistant" and choice.message.content
    assert answer.model == MODEL and answer.usage.completion_tokens <= 8
    text = stub.Completion(pb.CompletionRequest(model=MODEL, prompt=COUNTING, max_tokens=6,
                                                temperature=0), metadata=AUTH, timeout=TIMEOUT_S)
    assert text.choices[0].finish_reason == "length" and text.usage.completion_tokens == 6
    assert text.choices[0].text.strip().startswith("11")
    chunks = list(stub.CompletionStream(
        pb.CompletionRequest(model=MODEL, prompt=COUNTING, max_tokens=6, temperature=0),
        metadata=AUTH, timeout=TIMEOUT_S))
    assert "".join(c.choices[0].text for c in chunks if c.choices) == text.choices[0].text


def test_list_models(stub: pb_grpc.InferenceStub) -> None:
    models = stub.ListModels(pb.ListModelsRequest(), metadata=AUTH, timeout=TIMEOUT_S).models
    assert [m.id for m in models] == [MODEL]
    assert models[0].context_length > 0 and models[0].verification["verified"] is True


@pytest.mark.parametrize("metadata", [(), (("authorization", "Bearer agk_not-a-key"),)],
                         ids=["missing", "wrong"])
def test_a_missing_or_wrong_key_is_unauthenticated(stub: pb_grpc.InferenceStub,
                                                   metadata: tuple) -> None:
    for rpc, req in ((stub.ChatCompletion, chat()), (stub.ListModels, pb.ListModelsRequest())):
        with pytest.raises(grpc.RpcError) as exc:
            rpc(req, metadata=metadata, timeout=TIMEOUT_S)
        assert openai_error(exc.value, grpc.StatusCode.UNAUTHENTICATED)["code"] == (
            "invalid_api_key")


def test_unknown_model_is_not_found(stub: pb_grpc.InferenceStub) -> None:
    with pytest.raises(grpc.RpcError) as exc:
        list(stub.ChatCompletionStream(chat(model="no-such-model"), metadata=AUTH,
                                       timeout=TIMEOUT_S))
    err = openai_error(exc.value, grpc.StatusCode.NOT_FOUND)
    assert (err["code"], err["param"]) == ("model_not_found", "model")


def test_bad_parameters_are_invalid_argument(stub: pb_grpc.InferenceStub) -> None:
    with pytest.raises(grpc.RpcError) as exc:
        stub.ChatCompletion(chat(temperature=5), metadata=AUTH, timeout=TIMEOUT_S)
    assert openai_error(exc.value, grpc.StatusCode.INVALID_ARGUMENT)["param"] == "temperature"
    # extra reaches the same validation as a REST body
    req = chat()
    req.extra.update({"functions": [{"name": "f"}]})
    with pytest.raises(grpc.RpcError) as exc:
        stub.ChatCompletion(req, metadata=AUTH, timeout=TIMEOUT_S)
    err = openai_error(exc.value, grpc.StatusCode.INVALID_ARGUMENT)
    assert (err["code"], err["param"]) == ("unsupported_parameter", "functions")


def test_health_and_reflection(channel: grpc.Channel) -> None:
    health = health_pb2_grpc.HealthStub(channel)
    for service in ("", SERVICE):
        r = health.Check(health_pb2.HealthCheckRequest(service=service), timeout=TIMEOUT_S)
        assert r.status == health_pb2.HealthCheckResponse.SERVING
    refl = reflection_pb2_grpc.ServerReflectionStub(channel)
    asks = [reflection_pb2.ServerReflectionRequest(list_services=""),
            reflection_pb2.ServerReflectionRequest(file_containing_symbol=SERVICE)]
    listed, found = list(refl.ServerReflectionInfo(iter(asks), timeout=TIMEOUT_S))
    names = {s.name for s in listed.list_services_response.service}
    assert {SERVICE, "grpc.health.v1.Health"} <= names
    from google.protobuf import descriptor_pb2

    proto = descriptor_pb2.FileDescriptorProto.FromString(
        found.file_descriptor_response.file_descriptor_proto[0])
    assert proto.name == "autoglm/v1/inference.proto" and proto.package == "autoglm.v1"


def test_metrics_count_grpc_calls(srv: ServerProcess, stub: pb_grpc.InferenceStub) -> None:
    route = f"grpc:/{SERVICE}/ChatCompletion"

    def count(status: str, model: str) -> float:
        return srv.metric("autoglm_requests_total", route=route, status=status,
                          model=model) or 0.0

    ok, missing = count("200", MODEL), count("404", "")
    stub.ChatCompletion(chat(max_tokens=2), metadata=AUTH, timeout=TIMEOUT_S)
    with pytest.raises(grpc.RpcError):
        stub.ChatCompletion(chat(model="no-such-model"), metadata=AUTH, timeout=TIMEOUT_S)
    assert (count("200", MODEL), count("404", "")) == (ok + 1, missing + 1)


def _busy(srv: ServerProcess) -> float | None:
    return srv.metric("autoglm_busy_slots", model=MODEL)


def _wait_for(probe, want: float, within: float) -> float | None:
    deadline = time.monotonic() + within
    value = probe()
    while value != want and time.monotonic() < deadline:
        time.sleep(0.05)
        value = probe()
    return value


def test_a_cancelled_stream_frees_its_slot(srv: ServerProcess,
                                           stub: pb_grpc.InferenceStub) -> None:
    assert srv.metric("autoglm_slots", model=MODEL) == 1.0
    route = f"grpc:/{SERVICE}/CompletionStream"
    cancelled = srv.metric("autoglm_requests_total", route=route, status="499") or 0.0
    call = stub.CompletionStream(pb.CompletionRequest(model=MODEL, prompt=COUNTING,
                                                      max_tokens=1500, temperature=0),
                                 metadata=AUTH, timeout=TIMEOUT_S)
    for _ in range(3):
        next(call)
    assert _busy(srv) == 1.0, "the stream should hold the only slot"
    call.cancel()
    assert _wait_for(lambda: _busy(srv), 0.0, 2.0) == 0.0, "slot still busy after cancel"
    # with one slot, a new call is served now, not after the abandoned 1500-token answer
    t0 = time.monotonic()
    answer = stub.Completion(pb.CompletionRequest(model=MODEL, prompt=COUNTING, max_tokens=4,
                                                  temperature=0), metadata=AUTH, timeout=10)
    assert answer.usage.completion_tokens == 4 and time.monotonic() - t0 < 5
    assert (srv.metric("autoglm_requests_total", route=route, status="499") or 0.0) == (
        cancelled + 1)


# --- TLS ------------------------------------------------------------------------------------
FAILURES, FAILURE_WINDOW_S = 3, 2.0
@pytest.fixture(scope="module")
def tls_srv(start_server, stop_server, tls_cert) -> Iterator[ServerProcess]:
    ctx = ssl.create_default_context(cafile=str(tls_cert[0]))
    s = start_server("grpc-tls", grpc=True, tls=tls_cert, verify=ctx,
                     env={"AUTOGLM_AUTH_FAILURE_LIMIT": str(FAILURES),
                          "AUTOGLM_AUTH_FAILURE_WINDOW_S": str(FAILURE_WINDOW_S)})
    yield s
    stop_server(s)


def _handshake(port: int, cert: Path, max_version: ssl.TLSVersion | None = None
               ) -> tuple[str | None, str | None]:
    ctx = ssl.create_default_context(cafile=str(cert))
    ctx.set_alpn_protocols(["h2"])
    if max_version is not None:
        ctx.minimum_version = ssl.TLSVersion.TLSv1_2
        ctx.maximum_version = max_version
    with socket.create_connection(("127.0.0.1", port), timeout=10) as raw:
        with ctx.wrap_socket(raw, server_hostname="localhost") as tls:
            return tls.version(), tls.selected_alpn_protocol()


def test_grpc_over_tls13_only(tls_srv: ServerProcess, tls_cert: tuple[Path, Path]) -> None:
    cert = tls_cert[0]
    creds = grpc.ssl_channel_credentials(root_certificates=cert.read_bytes())
    with grpc.secure_channel(tls_srv.grpc_target, creds) as ch:
        stub = pb_grpc.InferenceStub(ch)
        assert [m.id for m in stub.ListModels(pb.ListModelsRequest(), metadata=AUTH,
                                              timeout=TIMEOUT_S).models] == [MODEL]
        chunks = list(stub.ChatCompletionStream(chat(max_tokens=4), metadata=AUTH,
                                                timeout=TIMEOUT_S))
        assert chunks[-1].usage.completion_tokens >= 1
    assert _handshake(tls_srv.grpc_port, cert) == ("TLSv1.3", "h2")
    with pytest.raises(ssl.SSLError):  # a TLS 1.2 client is refused, as on the HTTP port
        _handshake(tls_srv.grpc_port, cert, max_version=ssl.TLSVersion.TLSv1_2)
    with grpc.insecure_channel(tls_srv.grpc_target) as plain:  # no plaintext on the TLS port
        with pytest.raises(grpc.RpcError) as exc:
            pb_grpc.InferenceStub(plain).ListModels(pb.ListModelsRequest(), metadata=AUTH,
                                                    timeout=5)
        assert exc.value.code() == grpc.StatusCode.UNAVAILABLE


def test_failed_keys_are_limited_per_client_behind_the_tls_front(
        tls_srv: ServerProcess, tls_cert: tuple[Path, Path]) -> None:
    """The TLS front carried every client over one Unix socket, so the gRPC server saw no
    client address and the limit on failed keys never applied over TLS."""
    creds = grpc.ssl_channel_credentials(root_certificates=tls_cert[0].read_bytes())
    bad = (("authorization", "Bearer " + "x" * 40),)
    codes = []
    with grpc.secure_channel(tls_srv.grpc_target, creds) as ch:
        stub = pb_grpc.InferenceStub(ch)
        for _ in range(FAILURES + 2):
            with pytest.raises(grpc.RpcError) as exc:
                stub.ListModels(pb.ListModelsRequest(), metadata=bad, timeout=TIMEOUT_S)
            codes.append(exc.value.code())
    assert codes[:FAILURES] == [grpc.StatusCode.UNAUTHENTICATED] * FAILURES
    assert codes[FAILURES:] == [grpc.StatusCode.RESOURCE_EXHAUSTED] * 2
    time.sleep(FAILURE_WINDOW_S + 0.5)  # the window passes: the address may try again
    with grpc.secure_channel(tls_srv.grpc_target, creds) as ch:
        models = pb_grpc.InferenceStub(ch).ListModels(pb.ListModelsRequest(), metadata=AUTH,
                                                      timeout=TIMEOUT_S)
    assert [m.id for m in models.models] == [MODEL]
