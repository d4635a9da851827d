"""Events back to the OpenAI wire shapes: SSE chunks, or one JSON answer.

Events from an upstream carry the upstream's own objects (``raw``); they are re-encoded
with only the text put back (a stage may have changed it), so every other field the
upstream sent (tool calls, logprobs, refusal, finish reasons, ids, unknown fields)
reaches the client as it was. Events of the embedded engine are encoded here in full.
Usage is always known to the pipeline; the client sees it only where it asked
(``stream_options.include_usage`` on streams; always on JSON answers).
"""

from __future__ import annotations

import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

import orjson

from autoglm.engine.base import Delta, Finished
from autoglm.errors import EngineError
from autoglm.pipeline.request import InferenceRequest
from autoglm.pipeline.service import Answer
from autoglm.structured.calls import ToolCallParser, split_calls, wants_tool_calls

DONE = b"data: [DONE]\n\n"


def sse(data: dict[str, Any]) -> bytes:
    return b"data: " + orjson.dumps(data) + b"\n\n"


class OpenAIEncoder:
    __slots__ = (
        "_id",
        "_parsers",
        "chat",
        "created",
        "fingerprint",
        "include_usage",
        "model",
        "object",
        "tools",
    )

    def __init__(self, req: InferenceRequest, answer: Answer) -> None:
        self.chat = req.kind == "chat"
        self.include_usage = req.include_usage
        self.model = answer.ctx.model
        self.created = int(time.time())
        self._id: str | None = None  # made when first needed: upstream answers have theirs
        self.fingerprint: str | None = None
        self.object = "chat.completion.chunk" if self.chat else "text_completion"
        # The embedded engine writes tool calls as markup; they become ``tool_calls`` here
        # (after every stage saw the text). Upstream answers carry their own: a JSON one
        # starts with its ``raw`` object, a streamed one's events carry theirs, and the
        # first such event turns this off.
        self.tools = self.chat and answer.started.raw is None and wants_tool_calls(req.body)
        self._parsers: dict[int, ToolCallParser] = {}

    @property
    def id(self) -> str:
        if self._id is None:
            self._id = f"{'chatcmpl' if self.chat else 'cmpl'}-{uuid.uuid4().hex}"
        return self._id

    # --- streams ---------------------------------------------------------------------------
    def chunk(self, ev: Delta) -> dict[str, Any] | None:
        """The chunk for ``ev``, or None when it has nothing to say yet."""
        raw = ev.raw
        if raw is not None:  # an upstream chunk: put the text back, keep everything else
            self.tools = False
            self._adopt(raw)
            choices = raw.get("choices")
            if choices:
                _put_text(choices[0], "delta" if self.chat else None, ev.text)
            if not self.include_usage and "usage" in raw:
                del raw["usage"]  # asked for by us, not by the client
            return raw
        if self.chat:
            delta: dict[str, Any] = {}
            if ev.role is not None:
                delta["role"] = ev.role
            text, finish = ev.text, ev.finish_reason
            if self.tools:
                text, calls, finish = self._calls(ev)
                if calls:
                    delta["tool_calls"] = calls
                elif not text and finish is None and not delta:
                    return None  # text held while it may start a tool call: nothing yet
            if text or (finish is None and "tool_calls" not in delta):
                delta["content"] = text
            choice: dict[str, Any] = {"index": ev.index, "delta": delta, "logprobs": None,
                                      "finish_reason": finish}
        else:
            choice = {"index": ev.index, "text": ev.text, "logprobs": None,
                      "finish_reason": ev.finish_reason}
        return {"id": self.id, "object": self.object, "created": self.created,
                "model": self.model, "system_fingerprint": self.fingerprint,
                "choices": [choice]}

    def _calls(self, ev: Delta) -> tuple[str, list[dict[str, Any]], str | None]:
        parser = self._parsers.get(ev.index)
        if parser is None:
            parser = self._parsers[ev.index] = ToolCallParser()
        text, calls = parser.feed(ev.text)
        finish = ev.finish_reason
        if finish is not None:
            rest, more = parser.finish()
            text, calls = text + rest, calls + more
            if parser.calls and finish == "stop":
                finish = "tool_calls"
        return text, calls, finish

    def _adopt(self, raw: dict[str, Any]) -> None:
        """Chunks we make later (held text released by a stage) match the upstream's."""
        if isinstance(raw.get("id"), str):
            self._id = raw["id"]
        if isinstance(raw.get("created"), int):
            self.created = raw["created"]
        if isinstance(raw.get("model"), str):
            self.model = raw["model"]
        if isinstance(raw.get("system_fingerprint"), str):  # chunks a stage adds match it
            self.fingerprint = raw["system_fingerprint"]

    def usage_chunk(self, fin: Finished) -> dict[str, Any]:
        if fin.raw is not None and "usage" in fin.raw and "choices" in fin.raw:
            return fin.raw
        return {"id": self.id, "object": self.object, "created": self.created,
                "model": self.model, "system_fingerprint": None, "choices": [],
                "usage": usage(fin)}

    async def frames(self, answer: Answer) -> AsyncIterator[bytes]:
        """SSE frames of the whole answer, ``[DONE]`` last; the answer is closed after."""
        try:
            async for ev in answer:
                if isinstance(ev, Delta):
                    chunk = self.chunk(ev)
                    if chunk is not None:
                        yield sse(chunk)
                elif isinstance(ev, Finished):
                    if self.include_usage:
                        yield sse(self.usage_chunk(ev))
                    yield DONE
                    return
        finally:
            await answer.aclose()

    # --- one JSON answer -------------------------------------------------------------------
    async def collect(self, answer: Answer) -> dict[str, Any]:
        texts: dict[int, list[str]] = {}
        finish: dict[int, str | None] = {}
        raws: dict[int, dict[str, Any]] = {}
        fin: Finished | None = None
        try:
            async for ev in answer:
                if isinstance(ev, Delta):
                    texts.setdefault(ev.index, []).append(ev.text)
                    if ev.finish_reason is not None:
                        finish[ev.index] = ev.finish_reason
                    if ev.raw is not None and ev.index not in raws:
                        raws[ev.index] = ev.raw
                elif isinstance(ev, Finished):
                    fin = ev
        finally:
            await answer.aclose()
        if fin is None:
            raise EngineError("the engine ended the answer without finishing")
        whole = answer.started.raw
        if whole is not None:  # an upstream's answer: its own object, texts put back
            choices = []
            for index in sorted(set(texts) | set(raws)):
                choice = raws.get(index) or {"index": index, "finish_reason": finish.get(index)}
                _put_text(choice, "message" if self.chat else None,
                          "".join(texts.get(index, ())))
                choices.append(choice)
            whole["choices"] = choices
            return whole
        self.tools = self.tools and not raws
        return self._whole(texts, finish, fin)

    def _whole(self, texts: dict[int, list[str]], finish: dict[int, str | None],
               fin: Finished) -> dict[str, Any]:
        choices = []
        for index in sorted(texts):
            text = "".join(texts[index])
            if self.chat:
                message: dict[str, Any] = {"role": "assistant", "content": text, "refusal": None}
                reason = finish.get(index)
                if self.tools:
                    message["content"], calls = split_calls(text)
                    if calls:
                        message["tool_calls"] = calls
                        reason = "tool_calls" if reason == "stop" else reason
                choices.append({"index": index, "message": message, "logprobs": None,
                                "finish_reason": reason})
            else:
                choices.append({"index": index, "text": text, "logprobs": None,
                                "finish_reason": finish.get(index)})
        return {"id": self.id, "object": "chat.completion" if self.chat else "text_completion",
                "created": self.created, "model": self.model, "system_fingerprint": None,
                "choices": choices, "usage": usage(fin)}


def usage(fin: Finished) -> dict[str, Any]:
    """OpenAI's usage object; ``cached_tokens``: prompt tokens a cached prefix served,
    where the engine says (the embedded engine)."""
    out: dict[str, Any] = {"prompt_tokens": fin.prompt_tokens,
                           "completion_tokens": fin.completion_tokens,
                           "total_tokens": fin.prompt_tokens + fin.completion_tokens}
    if fin.cached_tokens is not None:
        out["prompt_tokens_details"] = {"cached_tokens": fin.cached_tokens}
    return out


def _put_text(choice: dict[str, Any], holder: str | None, text: str) -> None:
    """Put ``text`` back where the upstream had its text: ``choice[holder]["content"]``
    (chat) or ``choice["text"]`` (completions). Absent or null content stays so unless a
    stage produced text for it."""
    if holder is None:
        if "text" in choice or text:
            choice["text"] = text
        return
    box = choice.get(holder)
    if not isinstance(box, dict):
        if not text:
            return
        box = choice[holder] = {}
    if isinstance(box.get("content"), str) or text:
        box["content"] = text
