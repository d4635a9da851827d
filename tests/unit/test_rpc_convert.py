"""gRPC messages <-> the OpenAI objects: typed fields, ``extra``, and the error statuses."""

from __future__ import annotations

import grpc
import pytest
from google.protobuf import json_format

from autoglm.errors import InvalidRequestError
from autoglm.rpc import convert
from autoglm.rpc.gen.autoglm.v1 import inference_pb2 as pb
from autoglm.rpc.server import status_code


def _struct(**fields):
    s = pb.ChatMessage().extra
    s.update(fields)
    return s


def test_chat_request_becomes_the_openai_body() -> None:
    msg = pb.ChatCompletionRequest(
        model="m", max_tokens=16, temperature=0.0, stop=["\n"], seed=7, user="u",
        response_format=pb.ResponseFormat(type="json_object"),
        messages=[
            pb.ChatMessage(role="system", content="be brief"),
            pb.ChatMessage(role="user", parts=[
                pb.ContentPart(type="text", text="what is this?"),
                pb.ContentPart(type="image_url", extra=_struct(image_url={"url": "data:x"}))]),
            pb.ChatMessage(role="assistant", extra=_struct(tool_calls=[{"id": "c1", "index": 0}])),
            pb.ChatMessage(role="tool", content="42", extra=_struct(tool_call_id="c1")),
        ])
    msg.extra.update({"top_logprobs": 2, "logit_bias": {"50256": -100}, "tool_choice": None})
    body = convert.chat_body(msg, stream=False)
    assert body == {
        "model": "m", "max_tokens": 16, "temperature": 0.0, "stop": ["\n"], "seed": 7,
        "user": "u", "response_format": {"type": "json_object"}, "stream": False,
        "messages": [
            {"role": "system", "content": "be brief"},
            {"role": "user", "content": [{"type": "text", "text": "what is this?"},
                                         {"type": "image_url", "image_url": {"url": "data:x"}}]},
            {"role": "assistant", "content": None, "tool_calls": [{"id": "c1", "index": 0}]},
            {"role": "tool", "content": "42", "tool_call_id": "c1"},
        ],
        "top_logprobs": 2, "logit_bias": {"50256": -100}, "tool_choice": None,
    }
    assert isinstance(body["top_logprobs"], int)  # a Struct double, back as an integer
    assert "top_p" not in body and "n" not in body  # unset optional fields are not sent


def test_streams_always_ask_for_usage() -> None:
    msg = pb.CompletionRequest(model="m", prompt="hi")
    msg.extra.update({"stream_options": {"continuous_usage_stats": True}})
    assert convert.completion_body(msg, stream=True) == {
        "model": "m", "prompt": "hi", "stream": True,
        "stream_options": {"continuous_usage_stats": True, "include_usage": True}}


def test_prompt_forms_other_than_text_go_in_extra() -> None:
    msg = pb.CompletionRequest(model="m")
    msg.extra.update({"prompt": [[1, 2, 3]]})
    assert convert.completion_body(msg, stream=False)["prompt"] == [[1, 2, 3]]


@pytest.mark.parametrize("extra", [{"temperature": 1}, {"stream": True}])
def test_a_field_given_twice_is_refused(extra: dict) -> None:
    msg = pb.ChatCompletionRequest(model="m", temperature=0.5,
                                   messages=[pb.ChatMessage(role="user", content="x")])
    msg.extra.update(extra)
    with pytest.raises(InvalidRequestError) as exc:
        convert.chat_body(msg, stream=False)
    assert exc.value.param == next(iter(extra))


def test_content_and_parts_together_are_refused() -> None:
    msg = pb.ChatCompletionRequest(model="m", messages=[pb.ChatMessage(
        role="user", content="x", parts=[pb.ContentPart(type="text", text="y")])])
    with pytest.raises(InvalidRequestError):
        convert.chat_body(msg, stream=False)


def test_an_upstream_answer_keeps_every_field() -> None:
    answer = {
        "id": "chatcmpl-1", "object": "chat.completion", "created": 1700000000, "model": "m",
        "system_fingerprint": None, "service_tier": "default",
        "choices": [{"index": 0, "finish_reason": "tool_calls",
                     "logprobs": {"content": [{"token": "a", "logprob": -0.5}]},
                     "message": {"role": "assistant", "content": None, "refusal": None,
                                 "tool_calls": [{"id": "c1", "type": "function",
                                                 "function": {"name": "f", "arguments": "{}"}}]}},
                    {"index": 1, "finish_reason": "stop",
                     "message": {"role": "assistant", "content": "hi"}}],
        "usage": {"prompt_tokens": 3, "completion_tokens": 2, "total_tokens": 5,
                  "completion_tokens_details": {"reasoning_tokens": 0}},
    }
    out = convert.chat_response(answer)
    assert (out.id, out.created, out.model, out.system_fingerprint) == (
        "chatcmpl-1", 1700000000, "m", "")
    assert json_format.MessageToDict(out.extra) == {"service_tier": "default"}
    first, second = out.choices
    assert not first.message.HasField("content")  # null content stays null
    assert json_format.MessageToDict(first.message.extra) == {
        "tool_calls": answer["choices"][0]["message"]["tool_calls"]}  # refusal: null, left out
    assert json_format.MessageToDict(first.extra) == {
        "logprobs": answer["choices"][0]["logprobs"]}
    assert (second.index, second.message.content, second.finish_reason) == (1, "hi", "stop")
    assert (out.usage.prompt_tokens, out.usage.completion_tokens, out.usage.total_tokens) == (
        3, 2, 5)
    assert json_format.MessageToDict(out.usage.extra) == {
        "completion_tokens_details": {"reasoning_tokens": 0.0}}


def test_chunks() -> None:
    chunk = convert.chat_chunk({"id": "x", "created": 1, "model": "m", "choices": [
        {"index": 0, "delta": {"role": "assistant", "content": ""}, "logprobs": None,
         "finish_reason": None}]})
    delta = chunk.choices[0].delta
    assert (delta.role, delta.HasField("content"), delta.content) == ("assistant", True, "")
    assert not chunk.HasField("usage") and not chunk.choices[0].extra.fields
    last = convert.completion_chunk({"id": "x", "created": 1, "model": "m", "choices": [],
                                     "usage": {"prompt_tokens": 1, "completion_tokens": 2,
                                               "total_tokens": 3}})
    assert not last.choices and last.usage.total_tokens == 3


@pytest.mark.parametrize(("status", "code"), [
    (400, grpc.StatusCode.INVALID_ARGUMENT), (401, grpc.StatusCode.UNAUTHENTICATED),
    (403, grpc.StatusCode.PERMISSION_DENIED), (404, grpc.StatusCode.NOT_FOUND),
    (413, grpc.StatusCode.RESOURCE_EXHAUSTED), (429, grpc.StatusCode.RESOURCE_EXHAUSTED),
    (500, grpc.StatusCode.INTERNAL), (502, grpc.StatusCode.UNAVAILABLE),
    (503, grpc.StatusCode.UNAVAILABLE), (504, grpc.StatusCode.DEADLINE_EXCEEDED),
    (422, grpc.StatusCode.INVALID_ARGUMENT), (599, grpc.StatusCode.INTERNAL),
])
def test_http_statuses_map_to_grpc_codes(status: int, code: grpc.StatusCode) -> None:
    assert status_code(status) is code


def test_a_whole_answer_to_a_stream_request_becomes_chunks() -> None:
    whole = {"id": "x", "object": "chat.completion", "created": 1, "model": "m",
             "choices": [{"index": 0, "message": {"role": "assistant", "content": "hi"},
                          "finish_reason": "stop"}],
             "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2}}
    first, last = (convert.chat_chunk(c) for c in convert.as_chunks("chat", whole))
    assert (first.choices[0].delta.content, first.choices[0].finish_reason) == ("hi", "stop")
    assert not first.HasField("usage")
    assert not last.choices and last.usage.total_tokens == 2 and last.id == "x"
