"""One inference request in the OpenAI JSON shape, whichever transport brought it.

The body stays the client's JSON object (gRPC builds the same object from its
message), so an upstream server receives every field the client sent. The bytes are
kept while nothing changed the body: an upstream then gets them as they came.
Stages that rewrite text (a guard) go through ``rewrite_text``, which changes the body,
and the embedded engine's prepared request with it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from typing import Any, Literal

import orjson

from autoglm.engine.base import GenerationRequest
from autoglm.errors import InvalidRequestError

Kind = Literal["chat", "completion"]


def parse_json_object(raw: bytes) -> dict[str, Any]:
    """The request body as a JSON object; anything else is a 400."""
    if not raw:
        raise InvalidRequestError("The request body is empty; send a JSON object.")
    try:
        data = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise InvalidRequestError(
            f"We could not parse the JSON body of your request: {exc.args[0]}") from None
    if not isinstance(data, dict):
        raise InvalidRequestError("the request body must be a JSON object")
    return data


class InferenceRequest:
    __slots__ = ("kind", "_raw", "_body", "generation")

    def __init__(self, kind: Kind, *, raw: bytes | None = None,
                 body: dict[str, Any] | None = None) -> None:
        if raw is None and body is None:
            raise ValueError("an InferenceRequest needs raw bytes or a body")
        self.kind = kind
        self._raw = raw
        self._body = body
        self.generation: GenerationRequest | None = None  # set by the embedded engine

    @property
    def body(self) -> dict[str, Any]:
        """The JSON object; parsed on first use (after authentication, so a caller without
        a key learns nothing about the body)."""
        if self._body is None:
            self._body = parse_json_object(self._raw or b"")
        return self._body

    @property
    def model(self) -> Any:
        return self.body.get("model")

    @property
    def stream(self) -> bool:
        stream = self.body.get("stream", False)
        return stream is True

    @property
    def include_usage(self) -> bool:
        opts = self.body.get("stream_options")
        return isinstance(opts, dict) and opts.get("include_usage") is True

    def encoded(self, **overrides: Any) -> bytes:
        """The body as bytes for an upstream, with ``overrides`` applied on top."""
        if not overrides and self._raw is not None:
            return self._raw
        return orjson.dumps({**self.body, **overrides} if overrides else self.body)

    # --- what stages see and change --------------------------------------------------------
    def texts(self) -> list[str]:
        """Every text the caller supplied: message contents (text parts) or the prompt."""
        out: list[str] = []
        self._visit(lambda t: out.append(t) or t)
        return out

    def rewrite_text(self, fn: Callable[[str], str]) -> None:
        """Apply ``fn`` to every caller-supplied text, in the body and the prepared request."""
        self._visit(fn)
        self._raw = None  # the bytes no longer match the body
        gen = self.generation
        if gen is not None:
            if gen.messages is not None:
                msgs = [{**m, "content": fn(m["content"])} if isinstance(m.get("content"), str)
                        else m for m in gen.messages]
                self.generation = replace(gen, messages=msgs)
            if gen.prompt is not None:
                self.generation = replace(gen, prompt=fn(gen.prompt))

    def _visit(self, fn: Callable[[str], str]) -> None:
        body = self.body
        if self.kind == "chat":
            messages = body.get("messages")
            for msg in messages if isinstance(messages, list) else ():
                if not isinstance(msg, dict):
                    continue
                content = msg.get("content")
                if isinstance(content, str):
                    msg["content"] = fn(content)
                elif isinstance(content, list):
                    for part in content:
                        if isinstance(part, dict) and isinstance(part.get("text"), str):
                            part["text"] = fn(part["text"])
            return
        prompt = body.get("prompt")
        if isinstance(prompt, str):
            body["prompt"] = fn(prompt)
        elif isinstance(prompt, list):
            body["prompt"] = [fn(p) if isinstance(p, str) else p for p in prompt]
