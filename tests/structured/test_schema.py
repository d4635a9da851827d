"""JSON Schema to grammar: llama.cpp's own grammar engine, on the bundled model's
vocabulary, accepts documents valid against the schema and refuses invalid ones, token by
token; keywords the grammar cannot enforce are a 400 naming them."""

from __future__ import annotations

import ctypes
import json
from collections.abc import Iterator
from typing import Any

import jsonschema
import llama_cpp
import pytest

from autoglm.engine.catalog import embedded_model_path
from autoglm.engine.llamacpp.model import ContextConfig, LlamaModel
from autoglm.engine.llamacpp.sampling import GrammarCache, parse_grammar
from autoglm.errors import InvalidRequestError
from autoglm.structured.constraints import ConstraintCache
from autoglm.structured.schema import schema_grammar
from autoglm.structured.tools import parse_tools, tool_grammar

pytestmark = pytest.mark.model


@pytest.fixture(scope="module")
def model() -> Iterator[LlamaModel]:
    m = LlamaModel(embedded_model_path(), ContextConfig(1, 256, 64, 1))
    yield m
    m.close()


def accepts(model: LlamaModel, grammar: str, text: str) -> bool:
    """Whether the grammar lets the model write exactly ``text`` and then stop."""
    g = parse_grammar(model, grammar, None)
    one = (llama_cpp.llama_token_data * 1)()
    arr = llama_cpp.llama_token_data_array(one, 1, -1, False)

    def allowed(token: int) -> bool:
        one[0].id, one[0].logit, one[0].p = token, 1.0, 0.0
        arr.size, arr.selected, arr.sorted = 1, -1, False
        llama_cpp.llama_sampler_apply(g, ctypes.byref(arr))
        return one[0].logit != float("-inf")

    try:
        # byte-level pieces, one token per character run the tokenizer chose
        for token in model.tokenize(text, add_special=False, parse_special=False):
            if not allowed(token):
                return False
            llama_cpp.llama_sampler_accept(g, token)
        return allowed(llama_cpp.llama_vocab_eos(model.vocab))
    finally:
        llama_cpp.llama_sampler_free(g)


PERSON = {
    "type": "object",
    "properties": {
        "name": {"type": "string", "maxLength": 8},
        "age": {"type": "integer", "minimum": 0},
        "tags": {"type": "array", "items": {"enum": ["a", "b"]}, "minItems": 1, "maxItems": 2},
        "home": {"type": ["string", "null"]},
        "born": {"type": "string", "format": "date"},
    },
    "required": ["name", "age"],
}
TREE = {"$defs": {"node": {"type": "object", "properties": {
    "v": {"type": "number"}, "kids": {"type": "array", "items": {"$ref": "#/$defs/node"}}},
    "required": ["v"], "additionalProperties": False}}, "$ref": "#/$defs/node"}
CASES: list[tuple[dict[str, Any], list[str], list[str]]] = [
    (PERSON,
     ['{"name": "Ann", "age": 3}', '{"name":"Ann","age":0,"tags":["a","b"],"home":null}',
      '{"name": "A\\"\\u00e9", "age": 12, "born": "2024-02-09"}',
      '{\n  "name": "Ann",\n  "age": 3,\n  "home": "x"\n}'],
     ['{"age": 3}', '{"name": "Ann"}', '{"name": "Ann", "age": -1}', '{"name": "Ann", "age": 1.5}',
      '{"name": "Ann", "age": 3, "tags": []}', '{"name": "Ann", "age": 3, "tags": ["c"]}',
      '{"name": "Ann", "age": 3, "tags": ["a", "a", "a"]}', '{"name": "123456789", "age": 3}',
      '{"name": "Ann", "age": 3, "born": "2024-13-01"}', '{"name": "Ann", "age": 3, "x": 1}',
      '{"name": "A\nB", "age": 3}', '{"name": "Ann", "age": 3}{}']),
    (TREE, ['{"v": 1, "kids": [{"v": 2.5e3, "kids": []}, {"v": -0.5}]}'],
     ['{"v": 1, "kids": [{"kids": []}]}', '{"v": 01}', '{"v": 1, "kids": [{"v": 1, "w": 2}]}']),
    ({"type": "object", "additionalProperties": {"type": "integer"}},
     ['{}', '{"a": 1, "b": -2}'], ['{"a": "x"}', '{"a": 1,}']),
    ({"allOf": [{"type": "object", "properties": {"a": {"type": "boolean"}}, "required": ["a"]},
                {"properties": {"b": {"const": {"x": [1, "é"]}}}}]},
     ['{"a": true}', '{"a": false, "b": {"x": [1, "é"]}}'], ['{"b": {"x": [1, "é"]}}']),
    ({"type": "array", "prefixItems": [{"type": "string", "format": "uuid"},
                                       {"type": "string", "format": "email"},
                                       {"type": "string", "format": "ipv4"}], "items": False},
     ['["123e4567-e89b-12d3-a456-426614174000", "a.b@c.org", "10.0.255.1"]'],
     ['["123e4567", "a.b@c.org", "10.0.255.1"]', '["123e4567-e89b-12d3-a456-426614174000", '
      '"nope", "10.0.255.1"]', '["123e4567-e89b-12d3-a456-426614174000", "a@b.cd", "256.1.1.1"]']),
    ({"anyOf": [{"type": "string", "maxLength": 2}, {"type": "integer", "minimum": 1}]},
     ['"ab"', "7"], ['"abc"', "0", "null"]),
    ({"type": "string", "format": "date-time"}, ['"2026-11-25T10:00:00Z"',
                                                 '"2026-11-25T10:00:00.123+08:00"'],
     ['"2026-11-25 10:00:00Z"', '"2026-11-25T24:00:00Z"']),
]


@pytest.mark.parametrize(("schema", "good", "bad"), CASES)
def test_the_grammar_admits_exactly_what_the_schema_does(model, schema, good, bad) -> None:
    grammar = schema_grammar(schema)
    for doc in good:
        jsonschema.validate(json.loads(doc), schema)  # the case itself is right
        assert accepts(model, grammar, doc), doc
    for doc in bad:
        assert not accepts(model, grammar, doc), doc


@pytest.mark.parametrize(("schema", "named"), [
    ({"type": "string", "pattern": "^a"}, "schema.pattern"),
    ({"type": "number", "maximum": 3}, "schema.maximum"),
    ({"type": "integer", "minimum": 5}, "schema.minimum"),
    ({"type": "array", "uniqueItems": True}, "schema.uniqueItems"),
    ({"not": {"type": "string"}}, "schema.not"),
    ({"type": "string", "format": "uri"}, "schema.format"),
    ({"properties": {"a": {"$ref": "https://example.com/s.json"}}}, "schema.properties.a.$ref"),
    ({"properties": {"a": {"$ref": "#/$defs/missing"}}}, "schema.properties.a.$ref"),
    ({"type": "object", "properties": {"a": {"type": "strin"}}}, "schema.properties.a.type"),
    ({"enum": []}, "schema.enum"),
    ({"type": "object", "properties": {}, "required": ["x"]}, "schema.required"),
    ({"type": "array", "minItems": 3, "maxItems": 2}, "schema"),
    ({"type": "string", "maxLength": 10**6}, "schema.maxLength"),
])
def test_what_the_grammar_cannot_enforce_is_refused_by_name(schema, named) -> None:
    with pytest.raises(InvalidRequestError) as caught:
        schema_grammar(schema)
    assert f"'{named}'" in caught.value.message
    assert caught.value.status == 400 and caught.value.code == "invalid_json_schema"


def test_strict_schemas_follow_openais_rules() -> None:
    loose = {"type": "object", "properties": {"a": {"type": "string"}}, "required": ["a"]}
    schema_grammar(loose)  # fine when not strict
    with pytest.raises(InvalidRequestError, match="additionalProperties"):
        schema_grammar(loose, strict=True)
    partial = {"type": "object", "properties": {"a": {"type": "string"}, "b": {"type": "null"}},
               "required": ["a"], "additionalProperties": False}
    with pytest.raises(InvalidRequestError, match="missing: b"):
        schema_grammar(partial, strict=True)
    schema_grammar({**partial, "required": ["a", "b"]}, strict=True)


def test_tool_calls_are_constrained_to_the_offered_functions(model) -> None:
    tools = [{"type": "function", "function": {"name": "get_weather", "parameters": {
        "type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}},
             {"type": "function", "function": {"name": "noop"}}]
    call = '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>'
    noop = '<tool_call>\n{"name": "noop", "arguments": {}}\n</tool_call>'
    required, _ = tool_grammar(parse_tools(tools, "required", None))
    assert accepts(model, required, call) and accepts(model, required, noop)
    assert accepts(model, required, f"{call}\n{noop}")  # parallel: one per function
    assert not accepts(model, required, f"{call}\n{noop}\n{noop}")
    assert not accepts(model, required, call.replace('"Paris"', "3"))
    assert not accepts(model, required, call.replace("get_weather", "get_time"))
    assert not accepts(model, required, "It is sunny.")
    named, lazy = tool_grammar(parse_tools(tools, {"type": "function",
                                                   "function": {"name": "noop"}}, None))
    assert lazy is None and accepts(model, named, noop) and not accepts(model, named, call)
    single, _ = tool_grammar(parse_tools(tools, "required", False))
    assert not accepts(model, single, f"{call}\n{noop}")
    _, trigger = tool_grammar(parse_tools(tools, "auto", None))
    assert trigger == "<tool_call>"


def test_bad_tools_are_400_naming_where() -> None:
    for tools, choice, param in [
        ([{"type": "function", "function": {"name": "a b"}}], None, "tools.0.function.name"),
        ([{"type": "function", "function": {"name": "f", "parameters": 3}}], None,
         "tools.0.function.parameters"),
        ([{"type": "retrieval"}], None, "tools.0"),
        ([{"type": "function", "function": {"name": "f"}}], {"type": "function",
                                                            "function": {"name": "g"}},
         "tool_choice"),
        ([{"type": "function", "function": {"name": "f"}}], "always", "tool_choice"),
    ]:
        with pytest.raises(InvalidRequestError) as caught:
            parse_tools(tools, choice, None)
        assert caught.value.param == param
    bad_params = parse_tools([{"type": "function", "function": {
        "name": "f", "parameters": {"type": "object", "properties": {"x": {"not": {}}}}}}],
        "required", None)
    with pytest.raises(InvalidRequestError) as caught:
        tool_grammar(bad_params)
    assert caught.value.param == "tools.0.function.parameters"
    assert "'tools.0.function.parameters.properties.x.not'" in caught.value.message


def test_compiled_once_per_schema_and_parsed_once_per_grammar(model) -> None:
    cache = ConstraintCache()
    first = cache.get(PERSON, False, None)
    again = cache.get(json.loads(json.dumps(PERSON)), False, None)
    assert first is again and (cache.hits, cache.misses) == (1, 1)
    grammars = GrammarCache(model, size=2)
    for _ in range(3):
        llama_cpp.llama_sampler_free(grammars.make(first.grammar, None))
    assert (grammars.hits, grammars.misses) == (2, 1)
    grammars.close()


def test_fifty_fields_compile_quickly() -> None:
    schema = {"type": "object", "additionalProperties": False,
              "properties": {f"field_{i}": [{"type": "string"}, {"type": "integer"},
                                            {"enum": ["x", "y"]}, {"type": "boolean"}][i % 4]
                             for i in range(50)}}
    schema["required"] = list(schema["properties"])[:25]
    built = ConstraintCache().get(schema, False, None)
    assert built is not None and "field_49" in built.grammar


def test_a_template_with_a_tools_section_gets_the_tools_itself(model) -> None:
    from autoglm.engine.llamacpp.prompt import PromptBuilder

    native = ("{% if tools %}<|im_start|>system\nTOOLS:{% for t in tools %} "
              "{{ t['function']['name'] }}{% endfor %}<|im_end|>\n{% endif %}"
              "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}"
              "<|im_end|>\n{% endfor %}<|im_start|>assistant\n")
    tools = parse_tools([{"type": "function", "function": {"name": "get_weather"}}], None, None)
    messages = [{"role": "user", "content": "Weather?"}]

    def text(builder: PromptBuilder, toolset) -> str:  # noqa: ANN001
        return "".join(model.piece(t).decode("utf-8", "replace")
                       for t in builder.chat(messages, toolset))

    with_section = PromptBuilder(model, template=native)
    assert with_section.native_tools
    assert "TOOLS: get_weather" in text(with_section, tools)
    assert "<tools>" not in text(with_section, tools)  # not the fallback
    assert "TOOLS" not in text(with_section, parse_tools(
        [{"type": "function", "function": {"name": "get_weather"}}], "none", None))
    fallback = PromptBuilder(model)  # the bundled model's template has no tools section
    assert not fallback.native_tools
    shown = text(fallback, tools)
    assert "<tools>" in shown and '"name": "get_weather"' in shown and "<tool_call>" in shown
