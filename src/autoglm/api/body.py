"""The one body reader of the JSON routes, and the wrapper of routes that block.

A route that touches the database is written as a plain function of the request and its
body (``blocking``): the body is read on the event loop, then the function runs on a
worker thread, so no query ever stalls the loop (other requests, token streams).
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Awaitable, Callable
from typing import Any

from starlette.requests import Request
from starlette.responses import Response

from autoglm.pipeline.request import parse_json_object


async def read_json(request: Request) -> tuple[bytes, dict[str, Any]]:
    """(raw body, parsed object); anything but a JSON object is a 400."""
    body = await request.body()
    return body, parse_json_object(body)


def json_body(body: bytes) -> dict[str, Any]:
    """The body as a JSON object (a 400 otherwise)."""
    return parse_json_object(body)


def blocking(fn: Callable[[Request, bytes], Response]) -> Callable[[Request], Awaitable[Response]]:
    """An endpoint whose work blocks (database reads and writes): run off the event loop."""

    @functools.wraps(fn)
    async def endpoint(request: Request) -> Response:
        body = await request.body()
        return await asyncio.to_thread(fn, request, body)

    return endpoint
