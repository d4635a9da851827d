"""Tool-call markup to OpenAI's tool_calls, whatever the pieces the text arrives in."""

from __future__ import annotations

import json

import pytest

from autoglm.structured.calls import ToolCallParser, split_calls

CALLS = ('<tool_call>\n{"name": "get_weather", "arguments": {"city": "Pa}ri\\"s", '
         '"n": [1, {"a": 2}]}}\n</tool_call>\n<tool_call>\n{"name": "noop", "arguments": {}}'
         '\n</tool_call>')


def run(text: str, step: int) -> tuple[str, list[dict], ToolCallParser]:
    parser, content, deltas = ToolCallParser(), [], []
    for i in range(0, len(text), step):
        c, d = parser.feed(text[i:i + step])
        content.append(c)
        deltas += d
    c, d = parser.finish()
    return "".join(content) + c, deltas + d, parser


@pytest.mark.parametrize("step", [1, 2, 3, 5, 8, 13, 1000])
def test_streamed_deltas_rebuild_the_calls_as_openai_clients_do(step: int) -> None:
    content, deltas, parser = run("Let me check. " + CALLS, step)
    assert content == "Let me check. "
    rebuilt: dict[int, dict] = {}
    for d in deltas:  # what the openai SDK's stream accumulation does
        call = rebuilt.setdefault(d["index"], {"arguments": ""})
        if "id" in d:
            assert "name" in d["function"] and "id" not in call  # name first, once
            call.update(id=d["id"], name=d["function"]["name"])
        call["arguments"] += d["function"]["arguments"]
    assert [c["name"] for c in rebuilt.values()] == ["get_weather", "noop"]
    assert json.loads(rebuilt[0]["arguments"]) == {"city": 'Pa}ri"s', "n": [1, {"a": 2}]}
    assert json.loads(rebuilt[1]["arguments"]) == {}
    assert [c["function"]["arguments"] for c in parser.calls] == \
        [rebuilt[0]["arguments"], rebuilt[1]["arguments"]]
    assert rebuilt[0]["id"].startswith("call_") and rebuilt[0]["id"] != rebuilt[1]["id"]


@pytest.mark.parametrize("text", ["plain answer", "a < b and <tool> tags", "ends with <tool_",
                                  "<tool_call"])
def test_text_that_only_looks_like_a_call_is_content(text: str) -> None:
    for step in (1, 4, 100):
        content, deltas, parser = run(text, step)
        assert (content, deltas, parser.calls) == (text, [], [])


def test_a_json_answer_splits_into_content_and_calls() -> None:
    assert split_calls("Sure.\n" + CALLS)[0] == "Sure."
    content, calls = split_calls(CALLS)
    assert content is None and len(calls) == 2
    assert split_calls("no calls") == ("no calls", [])


def test_an_answer_cut_short_keeps_the_partial_arguments() -> None:
    content, deltas, parser = run('<tool_call>\n{"name": "f", "arguments": {"a": "hal', 3)
    assert parser.calls[0]["function"]["arguments"] == '{"a": "hal'
