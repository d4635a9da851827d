"""The one body reader of the JSON routes."""

from __future__ import annotations

from typing import Any

from starlette.requests import Request

from autoglm.pipeline.request import parse_json_object


async def read_json(request: Request) -> tuple[bytes, dict[str, Any]]:
    """(raw body, parsed object); anything but a JSON object is a 400."""
    body = await request.body()
    return body, parse_json_object(body)
