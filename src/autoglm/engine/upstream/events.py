"""An upstream's OpenAI answers, parsed into the pipeline's events with nothing lost.

JSON: ``Started(raw=whole answer)``, a ``Delta`` per choice (``raw`` = the choice object,
tool calls, logprobs and all), then ``Finished`` with the usage. SSE: each ``data:``
chunk becomes a ``Delta`` per choice it carries (``raw`` = the chunk with that choice),
and the usage chunk becomes ``Finished``. The encoder (``pipeline/openai_format.py``)
turns them back into the same objects, with only the text put back in.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any

import orjson

from autoglm.engine.base import Delta, Event, Finished, Started
from autoglm.errors import AutoGLMError, UpstreamError, error_from_openai_body


def _text_of(choice: dict[str, Any], holder: str | None) -> str:
    if holder is None:
        text = choice.get("text")
    else:
        box = choice.get(holder)
        text = box.get("content") if isinstance(box, dict) else None
    return text if isinstance(text, str) else ""


def _usage(usage: Any) -> tuple[int, int]:
    if not isinstance(usage, dict):
        return 0, 0
    prompt, completion = usage.get("prompt_tokens"), usage.get("completion_tokens")
    return (prompt if isinstance(prompt, int) else 0,
            completion if isinstance(completion, int) else 0)


def from_json(chat: bool, model: str, body: bytes) -> list[Event]:
    try:
        whole = orjson.loads(body)
    except orjson.JSONDecodeError:
        whole = None
    choices = whole.get("choices") if isinstance(whole, dict) else None
    if not isinstance(choices, list):
        raise UpstreamError(f"model '{model}': the upstream's answer is not an OpenAI answer")
    prompt, completion = _usage(whole.get("usage"))
    events: list[Event] = [Started(prompt, raw=whole)]
    holder = "message" if chat else None
    for pos, choice in enumerate(choices):
        if not isinstance(choice, dict):
            continue
        index = choice.get("index")
        events.append(Delta(_text_of(choice, holder), index if isinstance(index, int) else pos,
                            choice.get("finish_reason"), raw=choice))
    events.append(Finished(prompt, completion, raw=whole.get("usage")))
    return events


class SSEParser:
    """Bytes of an upstream SSE stream in, events out. Knows when the stream is complete."""

    __slots__ = ("chat", "model", "_buf", "done", "finished", "_holder")

    def __init__(self, chat: bool, model: str) -> None:
        self.chat = chat
        self.model = model
        self._buf = b""
        self.done = False  # [DONE] seen
        self.finished: Finished | None = None
        self._holder = "delta" if chat else None

    def feed(self, data: bytes) -> Iterator[Event]:
        buf = self._buf + data if self._buf else data
        start = 0
        while True:
            end = buf.find(b"\n", start)
            if end < 0:
                break
            line = buf[start:end]
            start = end + 1
            if line.startswith(b"data:"):
                yield from self._data(line[5:].strip())
        self._buf = buf[start:]

    def _data(self, payload: bytes) -> Iterator[Event]:
        if payload == b"[DONE]":
            self.done = True
            return
        if not payload or self.done:
            return
        try:
            chunk = orjson.loads(payload)
        except orjson.JSONDecodeError:
            raise UpstreamError(f"model '{self.model}': the upstream sent a malformed "
                                "stream chunk") from None
        if not isinstance(chunk, dict):
            return
        if "error" in chunk:
            err = chunk["error"]
            text = err.get("message") if isinstance(err, dict) else err
            raise UpstreamError(f"model '{self.model}': the upstream stream failed: {text}")
        choices = chunk.get("choices")
        usage = chunk.get("usage")
        if isinstance(usage, dict):
            prompt, completion = _usage(usage)
            self.finished = Finished(prompt, completion,
                                     raw=chunk if not choices else {**chunk, "choices": []})
        if not isinstance(choices, list):
            return
        for pos, choice in enumerate(choices):
            if not isinstance(choice, dict):
                continue
            raw = chunk if len(choices) == 1 else {**chunk, "choices": [choice]}
            index = choice.get("index")
            yield Delta(_text_of(choice, self._holder),
                        index if isinstance(index, int) else pos,
                        choice.get("finish_reason"), raw=raw)

    def end(self) -> Finished:
        """The stream is over: usage as reported (zero where the upstream gave none)."""
        return self.finished or Finished(0, 0)


_URL = re.compile(r"\b[a-z][a-z0-9+.-]*://\S+", re.I)
_ADDRESS = re.compile(r"\b\d{1,3}(?:\.\d{1,3}){3}(?::\d+)?\b|\[[0-9a-f:]+\](?::\d+)?", re.I)
_PATH = re.compile(r"(?<![\w.])/(?:[\w.-]+/)+[\w.-]*")
MAX_MESSAGE = 300


def rejection(model: str, status: int, body: bytes) -> AutoGLMError:
    """An upstream's 4xx, kept a 4xx with its param and code; its message names the model
    and is stripped of what would describe the upstream (URLs, addresses, file paths, a
    trace), so a client learns what was wrong with its request, not where it went."""
    err = error_from_openai_body(status, body, f"the request was rejected (HTTP {status})")
    text = err.message.split("Traceback", 1)[0]
    text = _PATH.sub("[path]", _ADDRESS.sub("[address]", _URL.sub("[url]", text)))
    text = " ".join(text.split())[:MAX_MESSAGE] or f"the request was rejected (HTTP {status})"
    err.message = f"model '{model}': {text}"
    return err


def broken(model: str) -> AutoGLMError:
    return UpstreamError(f"model '{model}': the upstream stream broke off")
