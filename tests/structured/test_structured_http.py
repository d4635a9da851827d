"""Structured outputs and tools over HTTP on the bundled model, and through the clients
that must work unchanged: the openai SDK and LangChain."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any, Literal

import jsonschema
import pytest
from pydantic import BaseModel

from tests.conftest import ADMIN_KEY, MODEL, AppClient, make_settings, start_app

pytestmark = pytest.mark.model

WEATHER = {"type": "function", "function": {
    "name": "get_weather", "description": "Current weather of a city",
    "parameters": {"type": "object", "properties": {
        "city": {"type": "string", "maxLength": 40},
        "unit": {"enum": ["celsius", "fahrenheit"]}}, "required": ["city"]}}}
PERSON = {"type": "object", "properties": {
    "name": {"type": "string", "maxLength": 30}, "age": {"type": "integer", "minimum": 0},
    "city": {"enum": ["Paris", "Rome", "Oslo"]}}, "required": ["name", "age", "city"],
    "additionalProperties": False}


@pytest.fixture(scope="module")
async def app(tmp_path_factory) -> AsyncIterator[AppClient]:  # noqa: ANN001
    settings = make_settings(tmp_path_factory.mktemp("structured"), max_body_bytes=65536,
                             ctx_per_slot=1024, default_max_tokens=96)
    async for client in start_app(settings):
        yield client


def ask(text: str, **kw: Any) -> dict[str, Any]:
    return {"model": MODEL, "messages": [{"role": "user", "content": text}], "max_tokens": 96,
            **kw}


def schema_format(schema: dict[str, Any], strict: bool = True) -> dict[str, Any]:
    return {"type": "json_schema", "json_schema": {"name": "answer", "schema": schema,
                                                   "strict": strict}}


def sse_chunks(text: str) -> list[dict[str, Any]]:
    return [json.loads(line[6:]) for line in text.splitlines()
            if line.startswith("data: {")]


async def test_json_schema_answers_validate_json_and_streamed(app: AppClient) -> None:
    for temperature, seed in ((0, None), (0.8, 1), (0.8, 2)):
        r = await app.post("/v1/chat/completions", ask(
            "Invent a person.", temperature=temperature, seed=seed,
            response_format=schema_format(PERSON)))
        assert r.status_code == 200, r.text
        choice = r.json()["choices"][0]
        assert choice["finish_reason"] == "stop"
        jsonschema.validate(json.loads(choice["message"]["content"]), PERSON)
    r = await app.post("/v1/chat/completions", ask(
        "Invent a person.", temperature=0.8, seed=3, stream=True,
        response_format=schema_format(PERSON)))
    chunks = sse_chunks(r.text)
    text = "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks)
    jsonschema.validate(json.loads(text), PERSON)
    assert chunks[-1]["choices"][0]["finish_reason"] == "stop"


async def test_a_required_tool_call_is_valid_json_and_streamed_as_openai_does(
        app: AppClient) -> None:
    params = WEATHER["function"]["parameters"]
    r = await app.post("/v1/chat/completions", ask(
        "What is the weather in Paris?", temperature=0, tools=[WEATHER],
        tool_choice="required"))
    assert r.status_code == 200, r.text
    choice = r.json()["choices"][0]
    assert choice["finish_reason"] == "tool_calls"
    assert choice["message"]["content"] is None
    calls = choice["message"]["tool_calls"]
    assert calls and all(c["type"] == "function" and c["id"].startswith("call_") for c in calls)
    assert calls[0]["function"]["name"] == "get_weather"
    jsonschema.validate(json.loads(calls[0]["function"]["arguments"]), params)

    r = await app.post("/v1/chat/completions", ask(
        "What is the weather in Rome?", temperature=0.8, seed=5, stream=True, tools=[WEATHER],
        tool_choice={"type": "function", "function": {"name": "get_weather"}}))
    chunks = sse_chunks(r.text)
    deltas = [d for c in chunks for d in c["choices"][0]["delta"].get("tool_calls") or []]
    assert deltas[0]["function"]["name"] == "get_weather" and deltas[0]["id"]
    assert all("name" not in d["function"] and "id" not in d for d in deltas[1:])
    args = "".join(d["function"]["arguments"] for d in deltas)
    jsonschema.validate(json.loads(args), params)
    assert {d["index"] for d in deltas} == {0}  # a named choice makes one call
    assert chunks[-1]["choices"][0]["finish_reason"] == "tool_calls"


async def test_tool_results_in_the_history_and_tool_choice_none(app: AppClient) -> None:
    history = [
        {"role": "user", "content": "What is the weather in Paris?"},
        {"role": "assistant", "content": None, "tool_calls": [{
            "id": "call_1", "type": "function",
            "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'}}]},
        {"role": "tool", "tool_call_id": "call_1", "content": '{"temp_c": 21, "sky": "clear"}'},
    ]
    body = {"model": MODEL, "messages": history, "max_tokens": 40, "temperature": 0,
            "tools": [WEATHER], "tool_choice": "none"}
    r = await app.post("/v1/chat/completions", body)
    assert r.status_code == 200, r.text
    message = r.json()["choices"][0]["message"]
    assert message["content"] and "tool_calls" not in message
    bad = [*history[:2], {"role": "tool", "content": "21"}]
    r = await app.post("/v1/chat/completions", {**body, "messages": bad})
    assert r.status_code == 400 and r.json()["error"]["param"] == "messages.2.tool_call_id"


async def test_bad_schemas_are_400_before_any_work(app: AppClient) -> None:
    for schema, where in [({"type": "object", "properties": {"a": {"type": "string",
                                                                   "pattern": "^x"}}},
                           "schema.properties.a.pattern"),
                          ({"type": "array", "items": {"type": "nope"}}, "schema.items.type")]:
        r = await app.post("/v1/chat/completions", ask("x", response_format=schema_format(
            schema, strict=False)))
        err = r.json()["error"]
        assert r.status_code == 400 and err["code"] == "invalid_json_schema", r.text
        assert err["param"] == "response_format" and f"'{where}'" in err["message"]
    r = await app.post("/v1/chat/completions", ask("x", response_format=schema_format(
        {"type": "object", "properties": {"a": {"type": "string"}}})))  # strict, but not
    assert r.status_code == 400 and "additionalProperties" in r.json()["error"]["message"]
    cache = app.app.state.engines[MODEL].constraints
    hits = cache.hits
    await app.post("/v1/chat/completions", ask("Hi", max_tokens=4,
                                               response_format=schema_format(PERSON)))
    assert cache.hits == hits + 1  # compiled by the first test, kept


# --- clients that must work unchanged --------------------------------------------------------
class City(BaseModel):
    name: str
    country: str
    population: int


class Weather(BaseModel):
    """Current weather of a city."""

    city: str
    unit: Literal["celsius", "fahrenheit"]


def openai_client(app: AppClient):  # noqa: ANN201
    import openai

    return openai.AsyncOpenAI(base_url="http://test/v1", api_key=ADMIN_KEY,
                              http_client=app.http, max_retries=0)


async def test_openai_sdk_parse_and_streamed_tools(app: AppClient) -> None:
    client = openai_client(app)
    parse = client.beta.chat.completions.parse if hasattr(client.beta, "chat") \
        else client.chat.completions.parse
    done = await parse(model=MODEL, messages=[{"role": "user", "content": "Describe Paris."}],
                       response_format=City, temperature=0, max_tokens=96)
    city = done.choices[0].message.parsed
    assert isinstance(city, City), done.choices[0].message.content

    stream = await client.chat.completions.create(
        model=MODEL, stream=True, temperature=0, max_tokens=96, tools=[WEATHER],
        tool_choice="required",
        messages=[{"role": "user", "content": "Weather in Oslo, in celsius?"}])
    calls: dict[int, dict[str, str]] = {}
    finish = None
    async for chunk in stream:
        choice = chunk.choices[0]
        for d in choice.delta.tool_calls or []:
            call = calls.setdefault(d.index, {"name": "", "arguments": ""})
            call["name"] += d.function.name or ""
            call["arguments"] += d.function.arguments or ""
        finish = choice.finish_reason or finish
    assert finish == "tool_calls" and calls[0]["name"] == "get_weather"
    jsonschema.validate(json.loads(calls[0]["arguments"]), WEATHER["function"]["parameters"])


async def test_langchain_bind_tools_and_structured_output(app: AppClient) -> None:
    from langchain_openai import ChatOpenAI

    llm = ChatOpenAI(model=MODEL, base_url="http://test/v1", api_key=ADMIN_KEY,
                     http_async_client=app.http, temperature=0, max_tokens=96, max_retries=0)
    bound = llm.bind_tools([Weather], tool_choice="any")
    message = await bound.ainvoke("What is the weather in Paris, in celsius?")
    assert message.tool_calls and not message.invalid_tool_calls
    Weather.model_validate(message.tool_calls[0]["args"])

    merged = None
    async for chunk in bound.astream("And in Rome?"):
        merged = chunk if merged is None else merged + chunk
    assert merged is not None and merged.tool_calls and not merged.invalid_tool_calls
    Weather.model_validate(merged.tool_calls[0]["args"])

    for method in ("json_schema", "function_calling"):
        structured = llm.with_structured_output(City, method=method)
        city = await structured.ainvoke("Describe Rome.")
        assert isinstance(city, City), method


async def test_over_grpc_tools_travel_in_extra(tmp_path) -> None:  # noqa: ANN001
    import grpc
    from google.protobuf import json_format

    from autoglm.rpc.gen.autoglm.v1 import inference_pb2 as pb
    from autoglm.rpc.gen.autoglm.v1 import inference_pb2_grpc as pb_grpc

    settings = make_settings(tmp_path / "data", grpc_port=0, max_body_bytes=65536,
                             ctx_per_slot=1024)
    req = pb.ChatCompletionRequest(model=MODEL, max_tokens=96, temperature=0, messages=[
        pb.ChatMessage(role="user", content="Weather in Paris?")])
    req.extra.update({"tools": [WEATHER], "tool_choice": "required"})
    async for client in start_app(settings):
        async with grpc.aio.insecure_channel(f"127.0.0.1:{client.app.state.rpc.port}") as ch:
            stub = pb_grpc.InferenceStub(ch)
            auth = (("authorization", f"Bearer {ADMIN_KEY}"),)
            answer = await stub.ChatCompletion(req, metadata=auth, timeout=60)
            choice = answer.choices[0]
            assert choice.finish_reason == "tool_calls"
            calls = json_format.MessageToDict(choice.message.extra)["tool_calls"]
            assert calls[0]["function"]["name"] == "get_weather"
            jsonschema.validate(json.loads(calls[0]["function"]["arguments"]),
                                WEATHER["function"]["parameters"])
            names = ""
            async for chunk in stub.ChatCompletionStream(req, metadata=auth, timeout=60):
                for c in chunk.choices:  # the last chunk has usage and no choice
                    for d in json_format.MessageToDict(c.delta.extra).get("tool_calls", []):
                        names += d["function"].get("name", "")
            assert names == "get_weather"
