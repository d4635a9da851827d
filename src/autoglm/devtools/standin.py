"""A stand-in OpenAI-compatible upstream: ``python -m autoglm.devtools.standin --port P``.

For tests and benchmarks only: it answers at once with a fixed body (JSON, or SSE when
the request says ``"stream": true``), tells who served a request (``X-Served-By`` and
``system_fingerprint``), and can be told to misbehave through ``POST /_control``
(``{"mode": "ok" | "error500" | "error400" | "hang" | "close" | "die_mid_stream",
"delay_ms": N, "chunk_delay_ms": N, "chunks": N, "answer": "plain" | "rich"}``).
``"rich"`` answers carry what an OpenAI server may send beyond text: tool calls,
logprobs, a refusal field, usage details and fields no client knows. Streams end with a
usage chunk when the request asks for one (``stream_options.include_usage``), as vLLM's
do. ``GET /_stats`` counts requests. With an API key (``--api-key`` or ``VLLM_API_KEY``),
paths under ``/v1`` need ``Authorization: Bearer KEY`` and answer 401 without it, as
``vllm serve`` does.
Plain asyncio with keep-alive, so it is much faster than the gateway it stands behind.
"""

from __future__ import annotations

import argparse
import asyncio
import os
from typing import Any

import orjson

from autoglm.devtools.serving import serve_until_signalled

_REASONS = {200: b"OK", 400: b"Bad Request", 401: b"Unauthorized", 404: b"Not Found",
            500: b"Internal Server Error"}


class Standin:
    def __init__(self, name: str, chunks: int, delay_ms: float, chunk_delay_ms: float) -> None:
        self.name = name
        self.conf: dict[str, Any] = {"mode": "ok", "delay_ms": delay_ms,
                                     "chunk_delay_ms": chunk_delay_ms, "chunks": chunks,
                                     "answer": "plain"}
        self.requests = 0
        self.served_model_name: str | None = None
        self.last_authorization: str | None = None
        self.last_body: bytes = b""
        self.in_flight = 0
        self.max_in_flight = 0
        self.api_key: str | None = None
        self._json = self._make_json()

    def _make_json(self) -> bytes:
        return orjson.dumps({
            "id": "chatcmpl-standin", "object": "chat.completion", "created": 0,
            "model": "standin", "system_fingerprint": self.name,
            "choices": [{"index": 0, "message": {"role": "assistant", "content": "Hello!"},
                         "finish_reason": "stop", "logprobs": None}],
            "usage": {"prompt_tokens": 5, "completion_tokens": 2, "total_tokens": 7},
        })

    def rich_json(self) -> bytes:
        return orjson.dumps({
            "id": "chatcmpl-rich", "object": "chat.completion", "created": 1700000000,
            "model": "standin", "system_fingerprint": self.name, "service_tier": "default",
            "x_vendor": {"kept": True},
            "choices": [
                {"index": 0, "message": {
                    "role": "assistant", "content": None, "refusal": None,
                    "tool_calls": [{"id": "call_1", "type": "function", "function": {
                        "name": "get_weather", "arguments": '{"city": "Paris"}'}}]},
                 "logprobs": {"content": [{"token": "get", "logprob": -0.25,
                                           "bytes": [103, 101, 116], "top_logprobs": []}]},
                 "finish_reason": "tool_calls", "stop_reason": None},
                {"index": 1, "message": {"role": "assistant", "content": "It is sunny.",
                                         "refusal": None},
                 "logprobs": None, "finish_reason": "stop", "stop_reason": 128009}],
            "usage": {"prompt_tokens": 12, "completion_tokens": 9, "total_tokens": 21,
                      "prompt_tokens_details": {"cached_tokens": 4}},
        })

    def rich_chunks(self, usage: bool) -> list[bytes]:
        base = {"id": "chatcmpl-rich", "object": "chat.completion.chunk",
                "created": 1700000000, "model": "standin", "system_fingerprint": self.name}
        lp = {"content": [{"token": "Sun", "logprob": -0.5, "bytes": [83, 117, 110],
                           "top_logprobs": [{"token": "Sun", "logprob": -0.5, "bytes": None}]}]}
        call = {"index": 0, "id": "call_1", "type": "function",
                "function": {"name": "get_weather", "arguments": ""}}
        choices = [
            {"index": 0, "delta": {"role": "assistant", "content": ""}, "logprobs": None,
             "finish_reason": None},
            {"index": 0, "delta": {"content": "Sun"}, "logprobs": lp, "finish_reason": None},
            {"index": 0, "delta": {"content": "ny"}, "logprobs": None, "finish_reason": None},
            {"index": 0, "delta": {"tool_calls": [call]}, "logprobs": None,
             "finish_reason": None},
            {"index": 0, "delta": {"tool_calls": [{"index": 0, "function": {
                "arguments": '{"city": "Paris"}'}}]}, "logprobs": None, "finish_reason": None},
            {"index": 0, "delta": {}, "logprobs": None, "finish_reason": "tool_calls",
             "stop_reason": None},
        ]
        out = [{**base, "choices": [c], **({"usage": None} if usage else {})} for c in choices]
        if usage:
            out.append({**base, "choices": [], "usage": {
                "prompt_tokens": 12, "completion_tokens": 5, "total_tokens": 17}})
        return [b"data: " + orjson.dumps(c) + b"\n\n" for c in out]

    def usage_chunk(self, n: int) -> bytes:
        body = {"id": "chatcmpl-standin", "object": "chat.completion.chunk", "created": 0,
                "model": "standin", "system_fingerprint": self.name, "choices": [],
                "usage": {"prompt_tokens": 5, "completion_tokens": n, "total_tokens": 5 + n}}
        return b"data: " + orjson.dumps(body) + b"\n\n"

    def chunk(self, i: int, last: bool, text: str | None = None) -> bytes:
        delta = {} if last else {"content": f"tok{i} " if text is None else text}
        body = {"id": "chatcmpl-standin", "object": "chat.completion.chunk", "created": 0,
                "model": "standin", "system_fingerprint": self.name,
                "choices": [{"index": 0, "delta": delta,
                             "finish_reason": "stop" if last else None}]}
        return b"data: " + orjson.dumps(body) + b"\n\n"


def _head(status: int, headers: dict[str, str], length: int | None) -> bytes:
    lines = [b"HTTP/1.1 %d %s" % (status, _REASONS.get(status, b"Status"))]
    for k, v in headers.items():
        lines.append(f"{k}: {v}".encode())
    if length is not None:
        lines.append(b"content-length: %d" % length)
    return b"\r\n".join(lines) + b"\r\n\r\n"


async def handle(st: Standin, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while True:
            head = await reader.readuntil(b"\r\n\r\n")
            lines = head.decode("latin-1").split("\r\n")
            method, path, _ = lines[0].split(" ", 2)
            length = 0
            auth = None
            for line in lines[1:]:
                lower = line[:15].lower()
                if lower == "content-length:":
                    length = int(line[15:].strip())
                elif lower.startswith("authorization:"):
                    auth = line[14:].strip()
                    if method_is_post(lines[0]):
                        st.last_authorization = auth
            body = await reader.readexactly(length) if length else b""
            if st.api_key and path.startswith("/v1") and auth != f"Bearer {st.api_key}":
                data = b'{"error":"Unauthorized"}'
                writer.write(_head(401, {"content-type": "application/json"}, len(data)) + data)
                continue
            if not await respond(st, method, path, body, writer):
                return
    except (asyncio.IncompleteReadError, ConnectionError, ValueError):
        pass
    finally:
        writer.close()


def method_is_post(request_line: str) -> bool:
    return request_line.startswith("POST ") and "/_control" not in request_line


async def respond(st: Standin, method: str, path: str, body: bytes,
                  writer: asyncio.StreamWriter) -> bool:
    """Write one response; False when the connection must close."""
    served = {"x-served-by": st.name, "content-type": "application/json"}
    if path == "/_control" and method == "POST":
        st.conf.update(orjson.loads(body or b"{}"))
        writer.write(_head(200, served, 2) + b"{}")
        return True
    if path == "/_stats":
        data = orjson.dumps({"requests": st.requests, "in_flight": st.in_flight,
                             "max_in_flight": st.max_in_flight, "mode": st.conf["mode"],
                             "served_model_name": st.served_model_name, "pid": os.getpid(),
                             "last_authorization": st.last_authorization,
                             "last_body": st.last_body[:4096].decode("utf-8", "replace"),
                             "gpus": os.environ.get("CUDA_VISIBLE_DEVICES"),
                             "env_names": sorted(os.environ)})
        writer.write(_head(200, served, len(data)) + data)
        return True
    if method == "GET" and path.rstrip("/").endswith(("/models", "/health")):
        if st.conf["mode"] in ("error500", "close", "hang"):
            writer.write(_head(500, served, 2) + b"{}")
            return True
        data = orjson.dumps({"object": "list", "data": [{"id": "standin", "object": "model"}]})
        writer.write(_head(200, served, len(data)) + data)
        return True
    if method != "POST" or not path.endswith("completions"):
        writer.write(_head(404, served, 2) + b"{}")
        return True
    st.requests += 1
    st.last_body = body
    st.in_flight += 1
    st.max_in_flight = max(st.max_in_flight, st.in_flight)
    try:
        return await _complete(st, body, writer, served)
    finally:
        st.in_flight -= 1


async def _complete(st: Standin, body: bytes, writer: asyncio.StreamWriter,
                    served: dict[str, str]) -> bool:
    conf = st.conf
    mode = conf["mode"]
    if conf["delay_ms"]:
        await asyncio.sleep(conf["delay_ms"] / 1000)
    if mode == "hang":
        await asyncio.sleep(3600)
    if mode == "close":
        return False
    if mode in ("error500", "error400"):
        status = 500 if mode == "error500" else 400
        data = orjson.dumps({"error": {"message": conf.get("message") or f"standin {mode}",
                                       "type": "invalid_request_error",
                                       "param": "messages", "code": mode}})
        writer.write(_head(status, served, len(data)) + data)
        return True
    compact = body.replace(b" ", b"")
    stream = b'"stream":true' in compact
    usage = b'"include_usage":true' in compact
    rich = conf.get("answer") == "rich"
    say = conf.get("say")  # an answer text of the test's choosing, streamed in small pieces
    if say and not stream:
        answer = orjson.loads(st._json)
        answer["choices"][0]["message"]["content"] = say
        data = orjson.dumps(answer)
        writer.write(_head(200, served, len(data)) + data)
        return True
    if not stream:
        data = st.rich_json() if rich else st._json
        writer.write(_head(200, served, len(data)) + data)
        return True
    writer.write(_head(200, {**served, "content-type": "text/event-stream",
                             "transfer-encoding": "chunked"}, None))
    n = int(conf["chunks"])
    chunks = st.rich_chunks(usage) if rich else [st.chunk(i, i == n) for i in range(n + 1)]
    if say:
        size = int(conf.get("say_chunk") or 3)
        pieces = [say[i:i + size] for i in range(0, len(say), size)]
        chunks = [st.chunk(0, False, text) for text in pieces] + [st.chunk(0, True)]
    if usage and not rich:
        chunks.append(st.usage_chunk(n))
    for i, data in enumerate(chunks):
        if mode == "die_mid_stream" and i == 2:
            await writer.drain()
            return False
        writer.write(b"%x\r\n%s\r\n" % (len(data), data))
        if conf["chunk_delay_ms"]:
            await writer.drain()
            await asyncio.sleep(conf["chunk_delay_ms"] / 1000)
    done = b"data: [DONE]\n\n"
    writer.write(b"%x\r\n%s\r\n0\r\n\r\n" % (len(done), done))
    await writer.drain()
    return True


async def main_async(args: argparse.Namespace) -> None:
    st = Standin(args.name, args.chunks, args.delay_ms, args.chunk_delay_ms)
    st.served_model_name = args.served_model_name
    st.api_key = args.api_key or os.environ.get("VLLM_API_KEY") or None
    server = await asyncio.start_server(lambda r, w: handle(st, r, w), args.host, args.port,
                                        backlog=1024)
    await serve_until_signalled(
        server, f"standin {args.name} listening on {args.host}:{args.port}")


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="autoglm-standin")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--name", default="standin")
    p.add_argument("--chunks", type=int, default=8, help="content chunks per streamed answer")
    p.add_argument("--delay-ms", type=float, default=0.0, help="wait before answering")
    p.add_argument("--chunk-delay-ms", type=float, default=0.0, help="wait between chunks")
    p.add_argument("--served-model-name", default=None, help="as vllm serve's flag")
    p.add_argument("--api-key", default=None, help="as vllm serve's flag (or VLLM_API_KEY)")
    args, _unknown = p.parse_known_args(argv)  # `vllm serve MODEL ...`: the rest is ignored
    try:
        import uvloop

        uvloop.install()
    except ImportError:
        pass
    asyncio.run(main_async(args))


if __name__ == "__main__":
    main()
