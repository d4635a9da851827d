"""The model's tool-call markup (``tools.OPEN``...``tools.CLOSE``) to OpenAI's
``tool_calls``, as the text streams in.

``feed`` takes the next piece of answer text and returns (content, deltas): text that is
plain content, and tool-call deltas exactly as OpenAI streams them: for each call first
``{"index", "id", "type": "function", "function": {"name", "arguments": ""}}``, then
``{"index", "function": {"arguments": <fragment>}}`` as the arguments arrive. Text that
could be the start of ``<tool_call>`` is held until it is clearly one or the other.
``calls`` holds every call so far, whole (for JSON answers).
"""

from __future__ import annotations

import re
import uuid
from typing import Any

from autoglm.structured.tools import CLOSE, OPEN

_HEAD = re.compile(r'\s*\{\s*"name"\s*:\s*"((?:[^"\\]|\\.)*)"\s*,\s*"arguments"\s*:\s*')
_WS = " \t\r\n"


def call_id() -> str:
    return f"call_{uuid.uuid4().hex[:24]}"


class ToolCallParser:
    def __init__(self) -> None:
        self.calls: list[dict[str, Any]] = []
        self._state = "text"  # text | head | args | tail
        self._buf = ""
        self._depth = 0
        self._in_string = False
        self._escaped = False
        self._started = False  # the arguments' first character was seen

    def feed(self, text: str) -> tuple[str, list[dict[str, Any]]]:
        self._buf += text
        content: list[str] = []
        deltas: list[dict[str, Any]] = []
        while True:
            before = (self._state, len(self._buf))
            getattr(self, f"_{self._state}")(content, deltas)
            if (self._state, len(self._buf)) == before:
                return "".join(content), _merged(deltas)

    def finish(self) -> tuple[str, list[dict[str, Any]]]:
        """The answer ended: whatever is held goes out as it is."""
        content, deltas = "", []
        if self._state == "text":
            content = self._buf
        elif self._state == "head":
            content = OPEN + self._buf  # never became a call
        elif self._state == "args" and self._buf:  # cut short (max_tokens)
            deltas = [self._fragment(self._buf)]
        self._buf = ""
        return content, deltas

    # --- states -------------------------------------------------------------------------
    def _text(self, content: list[str], deltas: list[dict[str, Any]]) -> None:
        at = self._buf.find(OPEN)
        if at >= 0:
            lead = self._buf[:at]
            if self.calls:
                lead = lead.strip(_WS)  # the line breaks between calls
            content.append(lead)
            self._buf = self._buf[at + len(OPEN):]
            self._state = "head"
            return
        keep = _held(self._buf)
        out = self._buf[:len(self._buf) - keep]
        if self.calls:
            out = out.lstrip(_WS)
        content.append(out)
        self._buf = self._buf[len(self._buf) - keep:]

    def _head(self, content: list[str], deltas: list[dict[str, Any]]) -> None:
        match = _HEAD.match(self._buf)
        if match is None:
            return
        name = match.group(1)  # names are letters, digits, '_' and '-' (tools.parse_tools)
        call = {"id": call_id(), "type": "function", "function": {"name": name,
                                                                  "arguments": ""}}
        self.calls.append(call)
        deltas.append({"index": len(self.calls) - 1, "id": call["id"], "type": "function",
                       "function": {"name": name, "arguments": ""}})
        self._buf = self._buf[match.end():]
        self._state, self._depth, self._in_string, self._escaped = "args", 0, False, False
        self._started = False

    def _args(self, content: list[str], deltas: list[dict[str, Any]]) -> None:
        """Up to where the arguments' JSON value closes (brackets counted outside
        strings)."""
        buf = self._buf
        end = None
        skip = 0  # whitespace before the value begins
        for i, c in enumerate(buf):
            if self._in_string:
                if self._escaped:
                    self._escaped = False
                elif c == "\\":
                    self._escaped = True
                elif c == '"':
                    self._in_string = False
                continue
            if c in _WS and not self._started:
                skip = i + 1
                continue
            self._started = True
            if c == '"':
                self._in_string = True
            elif c in "{[":
                self._depth += 1
            elif c in "}]":
                self._depth -= 1
                if self._depth == 0:
                    end = i + 1
                    break
        part = buf[skip:] if end is None else buf[skip:end]
        if part:
            deltas.append(self._fragment(part))
        self._buf = "" if end is None else buf[end:]
        if end is not None:
            self._state = "tail"

    def _tail(self, content: list[str], deltas: list[dict[str, Any]]) -> None:
        at = self._buf.find(CLOSE)
        if at >= 0:
            self._buf = self._buf[at + len(CLOSE):]
            self._state = "text"

    def _fragment(self, text: str) -> dict[str, Any]:
        index = len(self.calls) - 1
        self.calls[index]["function"]["arguments"] += text
        return {"index": index, "function": {"arguments": text}}


def _merged(deltas: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One entry per call: a fragment joins the entry of its call before it."""
    out: list[dict[str, Any]] = []
    for d in deltas:
        if out and out[-1]["index"] == d["index"]:
            fn = out[-1]["function"]
            fn["arguments"] = fn.get("arguments", "") + d["function"]["arguments"]
        else:
            out.append({**d, "function": dict(d["function"])})
    return out


def _held(text: str) -> int:
    """How many trailing characters of ``text`` could begin ``OPEN``."""
    for n in range(min(len(OPEN) - 1, len(text)), 0, -1):
        if OPEN.startswith(text[-n:]):
            return n
    return 0


def split_calls(text: str) -> tuple[str | None, list[dict[str, Any]]]:
    """A whole answer: (content or None, tool calls)."""
    parser = ToolCallParser()
    content, _ = parser.feed(text)
    rest, _ = parser.finish()
    content = (content + rest)
    if parser.calls:
        content = content.strip(_WS)
    return (content or None) if parser.calls else content, parser.calls


def wants_tool_calls(body: Any) -> bool:
    """Whether an answer to this chat request may hold tool-call markup to convert."""
    return isinstance(body, dict) and bool(body.get("tools")) and \
        body.get("tool_choice") != "none"
