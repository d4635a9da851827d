"""What a batch input file holds: one request per line, checked at upload.

Each non-blank line is a JSON object ``{"custom_id", "method": "POST", "url", "body"}``:
``custom_id`` a string unique in the file, ``url`` one of ``ENDPOINTS`` and the same on
every line (a batch targets one endpoint), ``body`` an object naming a ``model`` and not
asking for a stream. The first bad line refuses the whole upload with a 400 that names
its line number (1-based, blank lines counted), so nothing is found wrong hours later.
The file is checked as it streams in: memory holds one line and the custom ids.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, BinaryIO

import orjson

from autoglm.errors import InvalidRequestError
from autoglm.pipeline.request import Kind

ENDPOINTS: dict[str, Kind] = {"/v1/chat/completions": "chat", "/v1/completions": "completion"}
MAX_CUSTOM_ID = 512
CHUNK = 1 << 20


@dataclass(frozen=True)
class InputSummary:
    lines: int  # requests in the file
    endpoint: str  # the url of every line
    model: str | None  # the model every line names, if they all name one


def _bad(number: int, what: str) -> InvalidRequestError:
    return InvalidRequestError(f"line {number} of the file: {what}", param="file",
                               code="invalid_batch_line")


def parse_line(raw: bytes, number: int) -> dict[str, Any]:
    """One line as an object with the four fields checked (not yet against the others)."""
    try:
        item = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise _bad(number, f"not valid JSON ({exc.args[0]})") from None
    if not isinstance(item, dict):
        raise _bad(number, "must be a JSON object with custom_id, method, url and body")
    custom_id = item.get("custom_id")
    if not isinstance(custom_id, str) or not custom_id:
        raise _bad(number, "custom_id must be a non-empty string")
    if len(custom_id) > MAX_CUSTOM_ID:
        raise _bad(number, f"custom_id is longer than {MAX_CUSTOM_ID} characters")
    if item.get("method") != "POST":
        raise _bad(number, "method must be \"POST\"")
    url = item.get("url")
    if url not in ENDPOINTS:
        raise _bad(number, f"url must be one of {', '.join(ENDPOINTS)}")
    body = item.get("body")
    if not isinstance(body, dict):
        raise _bad(number, "body must be a JSON object (the request body)")
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise _bad(number, "body.model must be a non-empty string")
    if body.get("stream") is True:
        raise _bad(number, "body.stream must not be true: batch answers are not streamed")
    return item


class LineChecker:
    """Fed the file's bytes as they arrive (``feed``), then ``close`` for the summary."""

    def __init__(self, max_lines: int) -> None:
        self.max_lines = max_lines
        self._carry = b""
        self._number = 0  # physical lines seen
        self._count = 0  # requests seen
        self._ids: set[str] = set()
        self._endpoint: str | None = None
        self._models: set[str] = set()

    def feed(self, chunk: bytes) -> None:
        data = self._carry + chunk
        *complete, self._carry = data.split(b"\n")
        for raw in complete:
            self._line(raw)

    def close(self) -> InputSummary:
        if self._carry:
            self._line(self._carry)
            self._carry = b""
        if self._count == 0 or self._endpoint is None:
            raise InvalidRequestError("the file holds no requests: one JSON object per line",
                                      param="file", code="invalid_batch_file")
        model = next(iter(self._models)) if len(self._models) == 1 else None
        return InputSummary(self._count, self._endpoint, model)

    def _line(self, raw: bytes) -> None:
        self._number += 1
        if self._number == 1 and raw.startswith(b"\xef\xbb\xbf"):
            raw = raw[3:]  # a byte order mark some editors write
        if not raw.strip():
            return
        item = parse_line(raw, self._number)
        self._count += 1
        if self._count > self.max_lines:
            raise _bad(self._number, f"the file holds more than {self.max_lines} requests")
        if item["custom_id"] in self._ids:
            raise _bad(self._number, f"custom_id {item['custom_id'][:64]!r} was used on an "
                                     "earlier line; each must be unique")
        self._ids.add(item["custom_id"])
        if self._endpoint is None:
            self._endpoint = item["url"]
        elif item["url"] != self._endpoint:
            raise _bad(self._number, f"url {item['url']} differs from the first line's "
                                     f"{self._endpoint}; a batch targets one endpoint")
        if len(self._models) < 2:
            self._models.add(item["body"]["model"])


def requests(f: BinaryIO) -> Iterator[tuple[str, str]]:
    """(custom_id, body as JSON text) of each request of a checked file, in order."""
    for number, raw in enumerate(f, start=1):
        if number == 1 and raw.startswith(b"\xef\xbb\xbf"):
            raw = raw[3:]
        if raw.strip():
            item = parse_line(raw, number)
            yield item["custom_id"], orjson.dumps(item["body"]).decode()
