"""A bare reverse proxy, the floor for a Python gateway (used by ``bench/gateway.py``).

Run from the repository root::

    .venv/bin/python bench/_bare_proxy.py --port P --upstream http://127.0.0.1:U

Starlette + uvicorn + one pooled ``aiohttp.ClientSession`` (opened at lifespan start, a
keep-alive ``TCPConnector`` with a large limit) and nothing else: no auth, no logging,
no middleware. Its only route, ``POST /v1/chat/completions``, reads the request body,
POSTs it to the upstream's ``/v1/chat/completions`` and answers with the upstream's status
and body (JSON), or, when the request says ``"stream": true``, streams the upstream's bytes
through chunk by chunk. uvicorn runs with the settings ``autoglm serve`` uses
(``log_config=None``, ``access_log=False``, ``server_header=False``, default loop and
HTTP implementation).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
from collections.abc import AsyncIterator

import aiohttp
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.routing import Route

ROUTE = "/v1/chat/completions"
CONNECTOR_LIMIT = 1024  # upstream connections kept; far above the benchmark's 16
KEEPALIVE_S = 75.0
JSON_HEADERS = {"Content-Type": "application/json"}


def wants_stream(body: bytes) -> bool:
    """True when the request body is a JSON object with ``"stream": true``."""
    try:
        doc = json.loads(body)
    except ValueError:
        return False
    return isinstance(doc, dict) and doc.get("stream") is True


async def relay(resp: aiohttp.ClientResponse) -> AsyncIterator[bytes]:
    """The upstream's bytes as they arrive; the connection goes back to the pool at the end."""
    try:
        async for chunk in resp.content.iter_any():
            yield chunk
    finally:
        resp.release()


async def read_all(resp: aiohttp.ClientResponse) -> bytes:
    try:
        return await resp.read()
    finally:
        resp.release()


@contextlib.asynccontextmanager
async def lifespan(app: Starlette) -> AsyncIterator[dict[str, aiohttp.ClientSession]]:
    connector = aiohttp.TCPConnector(limit=CONNECTOR_LIMIT, keepalive_timeout=KEEPALIVE_S)
    timeout = aiohttp.ClientTimeout(total=None)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
        yield {"session": session}  # lifespan state: request.state.session


def make_app(upstream: str) -> Starlette:
    url = upstream.rstrip("/") + ROUTE

    async def chat_completions(request: Request) -> Response:
        body = await request.body()
        session: aiohttp.ClientSession = request.state.session
        resp = await session.post(url, data=body, headers=JSON_HEADERS)
        if wants_stream(body):
            return StreamingResponse(relay(resp), status_code=resp.status,
                                     media_type=resp.headers.get("Content-Type"))
        return Response(await read_all(resp), status_code=resp.status,
                        media_type="application/json")

    return Starlette(routes=[Route(ROUTE, chat_completions, methods=["POST"])],
                     lifespan=lifespan)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--port", type=int, required=True, help="TCP port to listen on")
    p.add_argument("--host", default="127.0.0.1", help="bind address")
    p.add_argument("--upstream", required=True,
                   help="upstream base URL (scheme://host:port); " + ROUTE + " is appended")
    args = p.parse_args(argv)
    if not args.upstream.startswith(("http://", "https://")):
        p.error(f"--upstream must be an http(s) URL, got {args.upstream!r}")
    config = uvicorn.Config(
        make_app(args.upstream), host=args.host, port=args.port, log_config=None,
        access_log=False, server_header=False, timeout_graceful_shutdown=10,
    )
    server = uvicorn.Server(config)
    server.run()
    return 0 if server.started else 1


if __name__ == "__main__":
    sys.exit(main())
