"""The typed messages of ``autoglm/v1/inference.proto`` to and from the OpenAI JSON objects.

Requests become the OpenAI body the pipeline works on (the same object a REST client
would send), so every stage and engine sees one shape. Answers are the OpenAI objects
that ``pipeline/openai_format.py`` builds, turned into messages field by field; any
field with no typed place goes to the message's ``extra``, so nothing is dropped.
"""

from __future__ import annotations

from typing import Any

from google.protobuf import json_format, struct_pb2

from autoglm.errors import InvalidRequestError
from autoglm.rpc.gen.autoglm.v1 import inference_pb2 as pb

# Fields of both request messages that are sent only when set (proto3 ``optional``).
_OPTIONAL = ("max_tokens", "temperature", "top_p", "seed", "presence_penalty",
             "frequency_penalty", "n")


# --- requests ----------------------------------------------------------------------------------
def chat_body(msg: pb.ChatCompletionRequest, *, stream: bool) -> dict[str, Any]:
    body = _common(msg)
    body["messages"] = [_message(m) for m in msg.messages]
    if msg.HasField("max_completion_tokens"):
        body["max_completion_tokens"] = msg.max_completion_tokens
    if msg.HasField("response_format"):
        rf: dict[str, Any] = {"type": msg.response_format.type}
        if msg.response_format.HasField("json_schema"):
            rf["json_schema"] = _plain(msg.response_format.json_schema)
        body["response_format"] = rf
    return _finish(body, msg.extra, stream)


def completion_body(msg: pb.CompletionRequest, *, stream: bool) -> dict[str, Any]:
    body = _common(msg)
    if msg.HasField("prompt"):
        body["prompt"] = msg.prompt
    return _finish(body, msg.extra, stream)


def _common(msg: pb.ChatCompletionRequest | pb.CompletionRequest) -> dict[str, Any]:
    body: dict[str, Any] = {}
    if msg.model:
        body["model"] = msg.model
    for name in _OPTIONAL:
        if msg.HasField(name):
            body[name] = getattr(msg, name)
    if msg.stop:
        body["stop"] = list(msg.stop)
    if msg.user:
        body["user"] = msg.user
    return body


def _finish(body: dict[str, Any], extra: struct_pb2.Struct, stream: bool) -> dict[str, Any]:
    _merge(body, extra, "")
    if "stream" in body:
        raise InvalidRequestError("'stream' is chosen by the method (use the ...Stream method), "
                                  "not by extra", param="stream")
    body["stream"] = stream
    if stream:  # the stream's last message always carries usage
        opts = body.get("stream_options")
        body["stream_options"] = {**(opts if isinstance(opts, dict) else {}),
                                  "include_usage": True}
    return body


def _message(m: pb.ChatMessage) -> dict[str, Any]:
    out: dict[str, Any] = {"role": m.role}
    if m.HasField("content"):
        if m.parts:
            raise InvalidRequestError("a message has either content or parts, not both",
                                      param="messages")
        out["content"] = m.content
    elif m.parts:
        out["content"] = [_part(p) for p in m.parts]
    else:
        out["content"] = None
    if m.name:
        out["name"] = m.name
    _merge(out, m.extra, "messages.")
    return out


def _part(p: pb.ContentPart) -> dict[str, Any]:
    out: dict[str, Any] = {"type": p.type}
    if p.text or p.type == "text":
        out["text"] = p.text
    _merge(out, p.extra, "messages.content.")
    return out


def _merge(into: dict[str, Any], extra: struct_pb2.Struct, where: str) -> None:
    for key, value in _plain(extra).items():
        if key in into:
            raise InvalidRequestError(
                f"'{where}{key}' is given both as a field and in extra", param=where + key)
        into[key] = value


def _plain(struct: struct_pb2.Struct) -> dict[str, Any]:
    """A Struct as JSON data; integral numbers (doubles on the wire) as integers."""
    return _ints(json_format.MessageToDict(struct))


def _ints(value: Any) -> Any:
    if isinstance(value, float):
        return int(value) if value.is_integer() and abs(value) < 2**53 else value
    if isinstance(value, dict):
        return {k: _ints(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_ints(v) for v in value]
    return value


# --- answers -----------------------------------------------------------------------------------
_TOP = ("id", "object", "created", "model", "system_fingerprint", "choices", "usage")


def chat_response(d: dict[str, Any]) -> pb.ChatCompletionResponse:
    out = pb.ChatCompletionResponse()
    _top(out, d)
    for c in _dicts(d.get("choices")):
        choice = out.choices.add(index=_int(c.get("index")),
                                 finish_reason=_str(c.get("finish_reason")))
        _chat_message(choice.message, c.get("message"))
        _extra(choice.extra, c, ("index", "message", "finish_reason"))
    return out


def chat_chunk(d: dict[str, Any]) -> pb.ChatCompletionChunk:
    out = pb.ChatCompletionChunk()
    _top(out, d)
    for c in _dicts(d.get("choices")):
        choice = out.choices.add(index=_int(c.get("index")),
                                 finish_reason=_str(c.get("finish_reason")))
        _chat_message(choice.delta, c.get("delta"))
        _extra(choice.extra, c, ("index", "delta", "finish_reason"))
    return out


def completion_response(d: dict[str, Any]) -> pb.CompletionResponse:
    out = pb.CompletionResponse()
    _top(out, d)
    _text_choices(out, d)
    return out


def completion_chunk(d: dict[str, Any]) -> pb.CompletionChunk:
    out = pb.CompletionChunk()
    _top(out, d)
    _text_choices(out, d)
    return out


def as_chunks(kind: str, whole: dict[str, Any]) -> list[dict[str, Any]]:
    """A whole answer (an upstream may answer a stream request with JSON) as stream chunks:
    one with every choice, then the usage chunk."""
    usage = whole.pop("usage", None)
    if kind == "chat":
        for choice in _dicts(whole.get("choices")):
            choice["delta"] = choice.pop("message", None)
    rest = {k: v for k, v in whole.items() if k != "choices"}
    return [whole, {**rest, "choices": [], "usage": usage}]


def model(card: dict[str, Any]) -> pb.Model:
    out = pb.Model(id=card["id"], created=_int(card.get("created")),
                   owned_by=_str(card.get("owned_by")),
                   context_length=_int(card.get("context_length")))
    if card.get("verification") is not None:
        out.verification.update(card["verification"])
    return out


def _top(out: Any, d: dict[str, Any]) -> None:
    out.id = _str(d.get("id"))
    out.created = _int(d.get("created"))
    out.model = _str(d.get("model"))
    out.system_fingerprint = _str(d.get("system_fingerprint"))
    usage = d.get("usage")
    if isinstance(usage, dict):
        out.usage.prompt_tokens = _int(usage.get("prompt_tokens"))
        out.usage.completion_tokens = _int(usage.get("completion_tokens"))
        out.usage.total_tokens = _int(usage.get("total_tokens"))
        _extra(out.usage.extra, usage, ("prompt_tokens", "completion_tokens", "total_tokens"))
    _extra(out.extra, d, _TOP)


def _text_choices(out: Any, d: dict[str, Any]) -> None:
    for c in _dicts(d.get("choices")):
        choice = out.choices.add(index=_int(c.get("index")), text=_str(c.get("text")),
                                 finish_reason=_str(c.get("finish_reason")))
        _extra(choice.extra, c, ("index", "text", "finish_reason"))


def _chat_message(out: pb.ChatMessage, m: Any) -> None:
    if not isinstance(m, dict):
        return
    out.role = _str(m.get("role"))
    content = m.get("content")
    if isinstance(content, str):
        out.content = content
    elif isinstance(content, list):
        for part in content:
            if isinstance(part, dict):
                p = out.parts.add(type=_str(part.get("type")), text=_str(part.get("text")))
                _extra(p.extra, part, ("type", "text"))
    if isinstance(m.get("name"), str):
        out.name = m["name"]
    _extra(out.extra, m, ("role", "content", "name"))


def _extra(out: struct_pb2.Struct, d: dict[str, Any], known: tuple[str, ...]) -> None:
    """Fields with no typed place; null ones are left out (absent and null mean the same
    in these objects, and the embedded engine's chunks carry several)."""
    rest = {k: v for k, v in d.items() if k not in known and v is not None}
    if rest:
        out.update(rest)


def _int(value: Any) -> int:
    """A count or timestamp as an engine sent it (an upstream may send 1.0 or null)."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return int(value)
    return 0


def _str(value: Any) -> str:
    return value if isinstance(value, str) else ""


def _dicts(value: Any) -> list[dict[str, Any]]:
    return [v for v in value if isinstance(v, dict)] if isinstance(value, list) else []
