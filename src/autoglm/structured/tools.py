"""Tools on the embedded engine: the request's ``tools``/``tool_choice`` checked, shown to
the model, and its output constrained to calls whose arguments validate.

The model writes each call as one line of markup (the convention of Hermes-style tool
models, Qwen's among them)::

    <tool_call>
    {"name": "get_weather", "arguments": {"city": "Paris"}}
    </tool_call>

and ``calls.ToolCallParser`` turns that text into OpenAI's ``tool_calls``. A model whose
chat template has a tools section gets the tools through it (``tools=`` when rendering);
any other (the bundled SmolLM2) gets the documented fallback: a system message that lists
the functions as JSON and shows the markup above, prior calls written back as that markup,
and tool results as user messages wrapped in ``<tool_response>``.

The grammar: ``tool_choice: required`` (or a named function) admits only calls, from the
first token; ``auto`` leaves the model free until it writes ``<tool_call>``, then admits
only a valid call (a lazy grammar); ``none`` shows no tools and constrains nothing.
``parallel_tool_calls: false`` (or a named function) admits exactly one call; otherwise an
answer holds at most as many calls as there are functions offered (small models, the
bundled one among them, otherwise repeat the same call until ``max_tokens``).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any

from autoglm.errors import InvalidRequestError
from autoglm.structured.schema import GrammarBuilder, literal

OPEN, CLOSE = "<tool_call>", "</tool_call>"
_NAME = re.compile(r"^[a-zA-Z0-9_-]{1,64}$")


@dataclass(frozen=True)
class Function:
    name: str
    description: str | None
    parameters: dict[str, Any]
    strict: bool


@dataclass(frozen=True)
class ToolSet:
    functions: tuple[Function, ...]
    choice: str  # auto | required | none | the name of the one function to call
    parallel: bool

    @property
    def active(self) -> bool:
        return self.choice != "none"

    def offered(self) -> tuple[Function, ...]:
        if self.choice in ("auto", "required", "none"):
            return self.functions
        return tuple(f for f in self.functions if f.name == self.choice)

    def wire(self) -> list[dict[str, Any]]:
        """The tools as OpenAI writes them (for chat templates with a tools section)."""
        return [{"type": "function", "function": {
            "name": f.name, "description": f.description or "", "parameters": f.parameters}}
            for f in self.functions]


def parse_tools(tools: Any, tool_choice: Any, parallel: bool | None) -> ToolSet | None:
    """The request's tools, checked; None when it has none."""
    if not tools:
        if tool_choice not in (None, "none", "auto"):
            raise InvalidRequestError("'tool_choice' needs 'tools'", param="tool_choice")
        return None
    if not isinstance(tools, list) or len(tools) > 128:
        raise InvalidRequestError("'tools' must be an array of at most 128 tools",
                                  param="tools")
    functions: list[Function] = []
    for i, tool in enumerate(tools):
        where = f"tools.{i}"
        if not isinstance(tool, dict) or tool.get("type") != "function" or \
                not isinstance(tool.get("function"), dict):
            raise InvalidRequestError("each tool must be {'type': 'function', 'function': "
                                      "{...}}", param=where)
        fn = tool["function"]
        name = fn.get("name")
        if not isinstance(name, str) or not _NAME.match(name):
            raise InvalidRequestError("a function name must be 1-64 letters, digits, '_' or "
                                      "'-'", param=f"{where}.function.name")
        if any(f.name == name for f in functions):
            raise InvalidRequestError(f"two tools are named '{name}'",
                                      param=f"{where}.function.name")
        params = fn.get("parameters", {"type": "object", "properties": {}})
        if not isinstance(params, dict):
            raise InvalidRequestError("'parameters' must be a JSON Schema object",
                                      param=f"{where}.function.parameters")
        desc = fn.get("description")
        functions.append(Function(name, desc if isinstance(desc, str) else None, params,
                                  fn.get("strict") is True))
    choice = _choice(tool_choice, {f.name for f in functions})
    return ToolSet(tuple(functions), choice, parallel is not False)


def _choice(value: Any, names: set[str]) -> str:
    if value is None:
        return "auto"
    if value in ("auto", "required", "none"):
        return str(value)
    if isinstance(value, dict) and value.get("type") == "function" and \
            isinstance(value.get("function"), dict):
        name = value["function"].get("name")
        if name in names:
            return str(name)
        raise InvalidRequestError(f"tool_choice names '{name}', which is not among the tools",
                                  param="tool_choice")
    raise InvalidRequestError("'tool_choice' must be 'none', 'auto', 'required' or "
                              "{'type': 'function', 'function': {'name': ...}}",
                              param="tool_choice")


def tool_grammar(tools: ToolSet, answer: tuple[GrammarBuilder, str] | None = None
                 ) -> tuple[str, str | None]:
    """(GBNF, lazy trigger or None) for the calls ``tools`` allows. ``answer``: the rules of
    a JSON-schema answer the model may give instead of calls (``response_format``)."""
    out, answer_rule = answer if answer is not None else (GrammarBuilder(), None)
    alts = []
    for i, fn in enumerate(tools.offered()):
        try:
            args = out.add_schema(fn.parameters, f"t{i}", strict=fn.strict,
                                  where=f"tools.{i}.function.parameters")
        except InvalidRequestError as exc:
            exc.param = f"tools.{i}.function.parameters"
            raise
        head = literal('{"name": ' + json.dumps(fn.name) + ', "arguments": ')
        alts.append(out.rule(f"call-{i}", f'{head} {args} "}}"'))
    out.rule("call", " | ".join(alts))
    out.rule("call-block", f'{literal(OPEN + chr(10))} call {literal(chr(10) + CLOSE)}')
    most = len(tools.offered()) if tools.parallel else 1
    calls = "call-block" if most == 1 else f'call-block ("\\n" call-block){{0,{most - 1}}}'
    if answer_rule is not None and tools.choice == "auto":  # calls, or the schema's answer
        return out.text(f"{calls} | {answer_rule}"), None
    lazy = OPEN if tools.choice == "auto" else None
    return out.text(calls), lazy


def fallback_system(functions: tuple[Function, ...], choice: str) -> str:
    """The tools as the fallback shows them to a model whose template has no tools
    section."""
    listed = "\n".join(json.dumps({"type": "function", "function": {
        "name": f.name, "description": f.description or "", "parameters": f.parameters}},
        ensure_ascii=False) for f in functions)
    must = {"auto": "You may call one or more functions to answer the user.",
            "required": "You must call one or more functions."}.get(
        choice, f"You must call the function {choice}.")
    return (f"# Tools\n\n{must} The functions are listed within <tools></tools>:\n"
            f"<tools>\n{listed}\n</tools>\n\nFor each call, write a JSON object with the "
            f"function name and its arguments within {OPEN}{CLOSE} tags:\n{OPEN}\n"
            '{"name": <function-name>, "arguments": <args-json-object>}\n' + CLOSE)


def fallback_messages(messages: list[dict[str, Any]], tools: ToolSet | None
                      ) -> list[dict[str, Any]]:
    """Messages for a template without a tools section: the tools in the system message,
    past calls as markup, tool results as user messages."""
    out: list[dict[str, Any]] = []
    for m in messages:
        role = m.get("role")
        if role == "assistant" and m.get("tool_calls"):
            text = [m.get("content") or ""]
            for call in m["tool_calls"]:
                fn = call.get("function") or {}
                try:
                    args = json.loads(fn.get("arguments") or "{}")
                except ValueError:
                    args = fn.get("arguments")
                text.append(f"{OPEN}\n" + json.dumps({"name": fn.get("name"),
                                                      "arguments": args},
                                                     ensure_ascii=False) + f"\n{CLOSE}")
            out.append({"role": "assistant", "content": "\n".join(t for t in text if t)})
        elif role == "tool":
            out.append({"role": "user", "content": "<tool_response>\n"
                        f"{m.get('content') or ''}\n</tool_response>"})
        else:
            out.append({"role": role, "content": m.get("content") or ""})
    if tools is not None and tools.active:
        system = fallback_system(tools.offered(), tools.choice)
        if out and out[0]["role"] == "system":
            out[0] = {"role": "system", "content": f"{out[0]['content']}\n\n{system}"}
        else:
            out.insert(0, {"role": "system", "content": system})
    return out
