"""Refusals over the wire: the 413 body limit, and the OpenAI error shape everywhere."""

from __future__ import annotations

import time

import openai
import pytest

from .conftest import MAX_BODY_BYTES
from .support import MODEL, ServerProcess, assert_openai_error

pytestmark = pytest.mark.e2e


def test_body_over_limit_is_413(server: ServerProcess) -> None:
    big = "x" * (MAX_BODY_BYTES + 100)
    with server.openai() as client:
        with pytest.raises(openai.APIStatusError) as exc:
            client.chat.completions.create(
                model=MODEL, messages=[{"role": "user", "content": big}], max_tokens=4
            )
    assert exc.value.status_code == 413
    err = assert_openai_error(exc.value.response, 413, "request_too_large",
                              "invalid_request_error")
    assert str(MAX_BODY_BYTES) in err["message"]

    with server.client(auth=True) as http:
        # Without Content-Length (chunked upload) the body is counted while read.
        def chunks():
            for _ in range(8):
                yield b" " * 512
        r = http.post("/v1/chat/completions", content=chunks(),
                      headers={"content-type": "application/json"})
        assert "content-length" not in {k.lower() for k in r.request.headers}
        assert_openai_error(r, 413, "request_too_large")
        # A body under the limit still works afterwards, with the same connection pool.
        ok = http.post("/v1/chat/completions", json={
            "model": MODEL, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2})
        assert ok.status_code == 200, ok.text
        # The limit applies before authentication is even looked at.
        r = http.post("/v1/completions", content=b"{" + b" " * (MAX_BODY_BYTES + 10) + b"}",
                      headers={"content-type": "application/json",
                               "Authorization": "Bearer wrong"})
        assert_openai_error(r, 413, "request_too_large")


CHAT = "/v1/chat/completions"
GOOD_MSG = [{"role": "user", "content": "hi"}]


@pytest.mark.parametrize(
    ("method", "path", "kwargs", "auth", "status", "code"),
    [
        ("POST", CHAT, {"json": {"model": MODEL, "messages": GOOD_MSG}}, False, 401,
         "invalid_api_key"),
        ("GET", "/v1/models", {"headers": {"Authorization": "Bearer nope"}}, False, 401,
         "invalid_api_key"),
        ("POST", CHAT, {"json": {"model": "nope", "messages": GOOD_MSG}}, True, 404,
         "model_not_found"),
        ("GET", "/v1/models/nope", {}, True, 404, "model_not_found"),
        ("GET", "/v1/no-such-route", {}, True, 404, "not_found"),
        ("GET", "/no-such-route", {}, False, 404, "not_found"),
        ("GET", CHAT, {}, True, 405, "method_not_allowed"),
        ("POST", CHAT, {"content": b"{not json", "headers": {"content-type":
                                                               "application/json"}}, True,
         400, None),
        ("POST", CHAT, {"content": b""}, True, 400, None),
        ("POST", CHAT, {"json": [1, 2]}, True, 400, None),
        ("POST", CHAT, {"json": {"model": MODEL}}, True, 400, None),
        ("POST", CHAT, {"json": {"model": MODEL, "messages": GOOD_MSG, "max_tokens": "5"}},
         True, 400, None),
        ("POST", CHAT, {"json": {"model": MODEL, "messages": GOOD_MSG, "n": 2}}, True, 400,
         "unsupported_parameter"),
        ("POST", CHAT, {"json": {"model": MODEL, "messages": GOOD_MSG, "max_tokens": 100000}},
         True, 400, "context_length_exceeded"),
        ("POST", "/v1/completions", {"json": {"model": MODEL}}, True, 400, None),
        ("POST", CHAT, {"content": b"x" * (MAX_BODY_BYTES + 1)}, True, 413,
         "request_too_large"),
    ],
    ids=["no-key", "bad-key", "unknown-model", "unknown-model-card", "unknown-v1-route",
         "unknown-route", "wrong-method", "bad-json", "empty-body", "not-an-object",
         "missing-messages", "string-max-tokens", "n-2", "context-too-long",
         "missing-prompt", "too-large"],
)
def test_error_bodies_have_openai_shape(
    server: ServerProcess, method: str, path: str, kwargs: dict, auth: bool, status: int,
    code: str | None,
) -> None:
    with server.client(auth=auth) as http:
        r = http.request(method, path, **kwargs)
    err = assert_openai_error(r, status, code)
    assert r.headers.get("x-request-id"), "every response carries a request id"
    if status == 400:
        assert err["type"] == "invalid_request_error"
    if path == CHAT and status == 400 and "json" in kwargs and isinstance(kwargs["json"], dict):
        # validation errors name the offending parameter
        assert err["param"], err
    if status == 405:
        assert "POST" in r.headers.get("allow", ""), r.headers


def test_a_huge_body_sent_before_reading_still_gets_the_413(server: ServerProcess) -> None:
    """urllib sends the whole body, then reads: 64 MiB used to end in a connection reset."""
    import urllib.error
    import urllib.request

    body = b"x" * (64 * 1024 * 1024)
    req = urllib.request.Request(server.api_base + "/chat/completions", data=body, method="POST",
                                 headers={**server.auth, "Content-Type": "application/json"})
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    with pytest.raises(urllib.error.HTTPError) as exc:
        opener.open(req, timeout=60)
    assert exc.value.code == 413
    assert b"request_too_large" in exc.value.read()


def test_a_chunked_body_over_the_limit_that_arrived_whole_gets_its_413_at_once(
        server: ServerProcess) -> None:
    """The whole chunked body in one write: the limit is passed on its last piece, and the
    413 comes at once (it used to wait for more body, up to 30 s, and the client timed out
    first, now and then)."""
    import socket

    chunk = b" " * 512
    body = b"".join(b"%x\r\n%s\r\n" % (len(chunk), chunk) for _ in range(8)) + b"0\r\n\r\n"
    head = (f"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\n"
            f"Authorization: Bearer {server.key}\r\nContent-Type: application/json\r\n"
            "Transfer-Encoding: chunked\r\n\r\n").encode()
    started = time.monotonic()
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as s:
        s.sendall(head + body)
        reply = s.recv(65536)
    assert reply.startswith(b"HTTP/1.1 413"), reply[:200]
    assert time.monotonic() - started < 5.0
