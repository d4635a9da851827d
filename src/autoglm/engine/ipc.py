"""Gateway <-> engine messages: newline-delimited JSON over a Unix socket.

Requests: ``{"op": "hello"}`` or ``{"op": "generate", "kind": "chat"|"completion", ...}``.
Events: ``hello``, ``start`` (prompt_tokens), ``delta`` (text), ``done`` (finish_reason,
token counts, cached_tokens and the prefix-cache counters) and ``error`` (status, code,
message, param). A ``generate`` request may carry ``tenant`` (the prefix cache's scope).
"""

from __future__ import annotations

import asyncio
from typing import Any

import orjson

from autoglm.errors import AutoGLMError

LIMIT = 16 * 1024 * 1024  # one message at most: a request body and its messages


async def read_message(reader: asyncio.StreamReader) -> dict[str, Any] | None:
    line = await reader.readline()
    if not line:
        return None
    data = orjson.loads(line)
    if not isinstance(data, dict):
        raise ConnectionError("engine protocol: message is not an object")
    return data


async def write_messages(writer: asyncio.StreamWriter, messages: list[dict[str, Any]]) -> None:
    writer.write(b"".join(orjson.dumps(m) + b"\n" for m in messages))
    await writer.drain()


def error_event(exc: AutoGLMError) -> dict[str, Any]:
    return {"ev": "error", **exc.to_wire()}
