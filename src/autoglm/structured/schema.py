"""JSON Schema to a llama.cpp grammar (GBNF) that admits only JSON valid against it.

Every keyword a schema uses is either understood (the grammar enforces it), an
annotation (``title``, ``description``...: ignored), or refused with a 400 that names it
and where it is: a grammar that silently ignored ``maximum`` would let through answers
the schema rejects, and the promise is that a completed answer always validates.

What the grammar enforces: ``type`` (one or a list), ``properties``, ``required``,
``additionalProperties`` (false, true or a schema), ``items``, ``prefixItems``,
``minItems``/``maxItems``, ``enum``, ``const``, ``anyOf``/``oneOf`` (as a choice between
alternatives; ``oneOf`` alternatives that overlap are not told apart), ``allOf`` of object
schemas (merged), local ``$ref`` (``#``, ``#/$defs/...``, ``#/definitions/...``, recursion
included), strings' ``minLength``/``maxLength`` and ``format`` date, time, date-time,
uuid, email and ipv4 (their shape: a date's day is 01-31 in every month), and integers'
``minimum`` of 0 or 1. Properties come in the order the schema lists them (optional ones
may be left out). Whitespace between tokens is limited, so that a small model cannot
spend its whole budget on blank lines.

``strict: true`` (OpenAI's structured outputs) also requires what OpenAI requires of a
strict schema: every object lists all its properties in ``required`` and sets
``additionalProperties: false``.
"""

from __future__ import annotations

import json
import re
from typing import Any

from autoglm.errors import InvalidRequestError

ANNOTATIONS = frozenset({
    "title", "description", "default", "examples", "$schema", "$id", "$comment",
    "deprecated", "readOnly", "writeOnly", "$defs", "definitions", "discriminator",
})
UNDERSTOOD = frozenset({
    "type", "properties", "required", "additionalProperties", "items", "prefixItems",
    "minItems", "maxItems", "enum", "const", "anyOf", "oneOf", "allOf", "$ref",
    "minLength", "maxLength", "format", "minimum",
})
_OWN = {"object": frozenset({"properties", "required", "additionalProperties"}),
        "array": frozenset({"items", "prefixItems", "minItems", "maxItems"}),
        "string": frozenset({"minLength", "maxLength", "format"}),
        "integer": frozenset({"minimum"})}
TYPES = ("string", "number", "integer", "boolean", "null", "object", "array")
MAX_REPEAT = 1000  # the largest minItems/maxItems/minLength/maxLength a grammar spells out

_SPACE = '| " " | "\\n" [ \\t]{0,16}'
PRIMITIVES: dict[str, str] = {
    "space": _SPACE,
    "char": '[^"\\\\\\x7F\\x00-\\x1F] | "\\\\" (["\\\\/bfnrt] | "u" [0-9a-fA-F]{4})',
    "string": '"\\"" char* "\\"" space',
    "integral": '"0" | [1-9] [0-9]{0,15}',
    "integer": '"-"? integral space',
    "number": '"-"? integral ("." [0-9]{1,15})? ([eE] [-+]? [0-9]{1,15})? space',
    "boolean": '("true" | "false") space',
    "null": '"null" space',
    "value": "object | array | string | number | boolean | null",
    "object": '"{" space (string ":" space value ("," space string ":" space value)*)? '
              '"}" space',
    "array": '"[" space (value ("," space value)*)? "]" space',
}
_DEPS = {"string": ("char", "space"), "integer": ("integral", "space"),
         "number": ("integral", "space"), "boolean": ("space",), "null": ("space",),
         "value": ("object", "array", "string", "number", "boolean", "null"),
         "object": ("string", "value", "space"), "array": ("value", "space")}
FORMATS: dict[str, str] = {
    "date": '[0-9]{4} "-" ("0" [1-9] | "1" [0-2]) "-" ("0" [1-9] | [12] [0-9] | "3" [01])',
    "time": '([01] [0-9] | "2" [0-3]) ":" [0-5] [0-9] ":" [0-5] [0-9] ("." [0-9]{1,6})? '
            '("Z" | [+-] ([01] [0-9] | "2" [0-3]) ":" [0-5] [0-9])',
    "date-time": 'format-date "T" format-time',
    "uuid": '[0-9a-f]{8} "-" [0-9a-f]{4} "-" [0-9a-f]{4} "-" [0-9a-f]{4} "-" [0-9a-f]{12}',
    "email": '[A-Za-z0-9._%+-]{1,64} "@" [A-Za-z0-9-]{1,63} ("." [A-Za-z0-9-]{1,63}){1,4}',
    "ipv4": 'octet "." octet "." octet "." octet',
}
_OCTET = '"25" [0-5] | "2" [0-4] [0-9] | "1" [0-9] [0-9] | [1-9]? [0-9]'
_LITERAL_ESCAPES = {"\r": "\\r", "\n": "\\n", "\t": "\\t", '"': '\\"', "\\": "\\\\"}


def literal(text: str) -> str:
    """A GBNF string literal matching ``text`` exactly."""
    return '"' + "".join(_LITERAL_ESCAPES.get(c, c) for c in text) + '"'


def _bad(path: str, message: str) -> InvalidRequestError:
    return InvalidRequestError(f"Invalid schema at '{path}': {message}",
                               param="response_format", code="invalid_json_schema")


class GrammarBuilder:
    """Rules of one grammar; ``add_schema`` may be called for several schemas (a tool set)
    with distinct prefixes, then ``text`` gives the whole grammar."""

    def __init__(self) -> None:
        self.rules: dict[str, str] = {}

    def rule(self, name: str, body: str) -> str:
        self.rules[name] = body
        return name

    def primitive(self, name: str) -> str:
        if name not in self.rules:
            self.rules[name] = PRIMITIVES[name]
            for dep in _DEPS.get(name, ()):
                self.primitive(dep)
        return name

    def text(self, root: str) -> str:
        lines = [f"root ::= {root}"]
        lines += [f"{name} ::= {body}" for name, body in self.rules.items()]
        return "\n".join(lines) + "\n"

    def add_schema(self, schema: Any, prefix: str, *, strict: bool = False,
                   where: str = "schema") -> str:
        """Rules for ``schema``; returns the name of its top rule."""
        return _Visitor(self, schema, prefix, strict, where).top()


class _Visitor:
    def __init__(self, out: GrammarBuilder, root: Any, prefix: str, strict: bool,
                 where: str) -> None:
        if not isinstance(root, dict):
            raise _bad(where, "a schema must be a JSON object")
        self.out = out
        self.root = root
        self.prefix = prefix
        self.strict = strict
        self.where = where
        self.refs: dict[str, str] = {}  # "$ref" -> rule name
        self.count = 0

    def top(self) -> str:
        return self.visit(self.root, self.where)

    def name(self, hint: str) -> str:
        self.count += 1
        clean = re.sub(r"[^A-Za-z0-9]+", "-", hint).strip("-")[-24:] or "x"
        return f"{self.prefix}-{self.count}-{clean}"

    # --- the walk -------------------------------------------------------------------------
    def visit(self, schema: Any, path: str) -> str:
        if schema is True or schema == {}:
            return self.out.primitive("value")
        if not isinstance(schema, dict):
            raise _bad(path, "a schema must be a JSON object")
        for key in schema:
            if key not in UNDERSTOOD and key not in ANNOTATIONS:
                raise _bad(f"{path}.{key}", f"the keyword '{key}' is not supported by "
                           "this model's structured outputs")
        if "$ref" in schema:
            return self.ref(schema["$ref"], path)
        if "const" in schema:
            return self.out.rule(self.name(path), self.json_literal(schema["const"]))
        if "enum" in schema:
            values = schema["enum"]
            if not isinstance(values, list) or not values:
                raise _bad(f"{path}.enum", "'enum' must be a non-empty array")
            return self.out.rule(self.name(path),
                                 " | ".join(self.json_literal(v) for v in values))
        for key in ("anyOf", "oneOf"):
            if key in schema:
                alts = schema[key]
                if not isinstance(alts, list) or not alts:
                    raise _bad(f"{path}.{key}", f"'{key}' must be a non-empty array")
                rest = {k: v for k, v in schema.items() if k != key and k not in ANNOTATIONS}
                names = [self.visit({**rest, **alt} if isinstance(alt, dict) else alt,
                                    f"{path}.{key}[{i}]") for i, alt in enumerate(alts)]
                return self.out.rule(self.name(path), " | ".join(names))
        if "allOf" in schema:
            return self.visit(self.merge_all_of(schema, path), path)
        kind = schema.get("type")
        if isinstance(kind, list):
            if not kind or any(k not in TYPES for k in kind):
                raise _bad(f"{path}.type", f"unknown type in {kind!r}")
            names = [self.visit({key: v for key, v in schema.items()
                                 if key in _OWN.get(k, ()) or key in ANNOTATIONS} | {"type": k},
                                path) for k in kind]
            return self.out.rule(self.name(path), " | ".join(names))
        if kind is None:
            kind = self.infer_type(schema)
        if kind not in TYPES:
            raise _bad(f"{path}.type", f"unknown type {kind!r}")
        self.check_applicable(schema, kind, path)
        return getattr(self, f"visit_{kind}")(schema, path)

    def infer_type(self, schema: dict[str, Any]) -> str | None:
        if "properties" in schema or "additionalProperties" in schema:
            return "object"
        if "items" in schema or "prefixItems" in schema:
            return "array"
        if any(k in schema for k in ("minLength", "maxLength", "format")):
            return "string"
        return "any"

    def check_applicable(self, schema: dict[str, Any], kind: str, path: str) -> None:
        allowed = _OWN.get(kind, frozenset()) | {"type"} | ANNOTATIONS
        for key in schema:
            if key not in allowed:
                raise _bad(f"{path}.{key}", f"the keyword '{key}' does not apply to type "
                           f"'{kind}' here, or is not supported with it")

    def visit_any(self, schema: dict[str, Any], path: str) -> str:
        return self.out.primitive("value")

    def visit_null(self, schema: dict[str, Any], path: str) -> str:
        return self.out.primitive("null")

    def visit_boolean(self, schema: dict[str, Any], path: str) -> str:
        return self.out.primitive("boolean")

    def visit_number(self, schema: dict[str, Any], path: str) -> str:
        return self.out.primitive("number")

    def visit_integer(self, schema: dict[str, Any], path: str) -> str:
        low = schema.get("minimum")
        if low is None:
            return self.out.primitive("integer")
        if low not in (0, 1) or isinstance(low, bool):
            raise _bad(f"{path}.minimum", "only a 'minimum' of 0 or 1 is supported")
        self.out.primitive("space")
        body = '[0-9] | [1-9] [0-9]{1,15}' if low == 0 else '[1-9] [0-9]{0,15}'
        return self.out.rule(self.name(path), f"({body}) space")

    def visit_string(self, schema: dict[str, Any], path: str) -> str:
        fmt = schema.get("format")
        if fmt is not None:
            if fmt not in FORMATS:
                raise _bad(f"{path}.format", f"the string format '{fmt}' is not supported "
                           f"(supported: {', '.join(sorted(FORMATS))})")
            if "minLength" in schema or "maxLength" in schema:
                raise _bad(path, "'format' with 'minLength'/'maxLength' is not supported")
            self.format_rule(fmt)
            self.out.primitive("space")
            return self.out.rule(self.name(path), f'"\\"" format-{fmt} "\\"" space')
        low, high = self.bounds(schema, "minLength", "maxLength", path)
        if low == 0 and high is None:
            return self.out.primitive("string")
        self.out.primitive("char")
        self.out.primitive("space")
        return self.out.rule(self.name(path), f'"\\"" {repeat("char", low, high)} "\\"" space')

    def format_rule(self, fmt: str) -> None:
        if f"format-{fmt}" in self.out.rules:
            return
        if fmt == "date-time":
            self.format_rule("date")
            self.format_rule("time")
        if fmt == "ipv4":
            self.out.rule("octet", _OCTET)
        self.out.rule(f"format-{fmt}", FORMATS[fmt])

    def visit_array(self, schema: dict[str, Any], path: str) -> str:
        self.out.primitive("space")
        prefix = schema.get("prefixItems")
        items = schema.get("items", prefix is None)
        low, high = self.bounds(schema, "minItems", "maxItems", path)
        parts: list[str] = []
        if prefix is not None:
            if not isinstance(prefix, list):
                raise _bad(f"{path}.prefixItems", "'prefixItems' must be an array")
            parts = [self.visit(s, f"{path}.prefixItems[{i}]") for i, s in enumerate(prefix)]
            if items is not False or low or high is not None:
                raise _bad(f"{path}.prefixItems", "'prefixItems' is supported only as a "
                           "fixed tuple ('items': false, no minItems/maxItems)")
            body = ' "," space '.join(parts)
            return self.out.rule(self.name(path), f'"[" space {body} "]" space')
        if isinstance(items, list):
            raise _bad(f"{path}.items", "'items' must be a schema (use 'prefixItems')")
        item = self.visit(items, f"{path}.items")
        if high == 0:
            return self.out.rule(self.name(path), '"[" space "]" space')
        more = f'("," space {item})'
        first = f"{item} {repeat(more, max(low - 1, 0), None if high is None else high - 1)}"
        body = first if low > 0 else f"({first})?"
        return self.out.rule(self.name(path), f'"[" space {body} "]" space')

    def visit_object(self, schema: dict[str, Any], path: str) -> str:
        props = schema.get("properties", {})
        if not isinstance(props, dict):
            raise _bad(f"{path}.properties", "'properties' must be an object")
        required = schema.get("required", [])
        if not isinstance(required, list) or any(not isinstance(r, str) for r in required):
            raise _bad(f"{path}.required", "'required' must be an array of strings")
        for name in required:
            if name not in props:
                raise _bad(f"{path}.required", f"'{name}' is required but not among the "
                           "properties")
        extra = schema.get("additionalProperties", not props)
        if self.strict:
            if schema.get("additionalProperties") is not False:
                raise _bad(path, "strict schemas must set 'additionalProperties': false on "
                           "every object")
            missing = [p for p in props if p not in required]
            if missing:
                raise _bad(f"{path}.required", "strict schemas must list every property in "
                           f"'required' (missing: {', '.join(missing)})")
        if not props and extra is True:
            return self.out.primitive("object")
        self.out.primitive("space")
        kvs = []
        for key, sub in props.items():
            value = self.visit(sub, f"{path}.properties.{key}")
            kvs.append((self.json_literal(key) + f' space ":" space {value}', key in required))
        if extra is not False:
            value = self.visit(extra, f"{path}.additionalProperties")
            self.out.primitive("string")
            kvs.append((f'string ":" space {value} ("," space string ":" space {value})*',
                        False))
        return self.out.rule(self.name(path), f'"{{" space {self.members(kvs, path)} "}}" space')

    def members(self, kvs: list[tuple[str, bool]], path: str) -> str:
        """Members in order, each optional one present or not, commas where due: a rule
        per position for "none written yet" (first) and "one written" (rest)."""
        n = len(kvs)
        rest = [""] * (n + 1)
        first = [""] * (n + 1)
        for i in range(n - 1, -1, -1):
            kv, req = kvs[i]
            after = rest[i + 1]
            if req:
                rest[i] = self.out.rule(self.name(f"{path}-r{i}"), f'"," space {kv} {after}')
                first[i] = self.out.rule(self.name(f"{path}-f{i}"), f"{kv} {after}")
            else:
                rest[i] = self.out.rule(self.name(f"{path}-r{i}"),
                                        f'("," space {kv})? {after}')
                body = f"{kv} {after} | {first[i + 1]}" if first[i + 1] else f"({kv} {after})?"
                first[i] = self.out.rule(self.name(f"{path}-f{i}"), body)
        return first[0] if n else ""

    # --- helpers --------------------------------------------------------------------------
    def bounds(self, schema: dict[str, Any], lo: str, hi: str,
               path: str) -> tuple[int, int | None]:
        low, high = schema.get(lo, 0), schema.get(hi)
        for key, v in ((lo, low), (hi, high)):
            if v is not None and (not isinstance(v, int) or isinstance(v, bool) or v < 0
                                  or v > MAX_REPEAT):
                raise _bad(f"{path}.{key}", f"'{key}' must be an integer from 0 to "
                           f"{MAX_REPEAT}")
        if high is not None and high < low:
            raise _bad(path, f"'{hi}' is less than '{lo}'")
        return low, high

    def json_literal(self, value: Any) -> str:
        self.out.primitive("space")
        return f"{literal(json.dumps(value, ensure_ascii=False))} space"

    def ref(self, ref: Any, path: str) -> str:
        if not isinstance(ref, str):
            raise _bad(f"{path}.$ref", "'$ref' must be a string")
        if ref in self.refs:
            return self.refs[ref]
        target: Any = self.root
        if ref != "#":
            if not ref.startswith("#/"):
                raise _bad(f"{path}.$ref", f"only local references ('#/...') are supported, "
                           f"not '{ref}'")
            for part in ref[2:].split("/"):
                part = part.replace("~1", "/").replace("~0", "~")
                if not isinstance(target, dict) or part not in target:
                    raise _bad(f"{path}.$ref", f"'{ref}' points to nothing")
                target = target[part]
        name = self.refs[ref] = self.name(ref)
        self.out.rules[name] = ""  # reserved: a recursive reference finds it
        self.out.rules[name] = self.visit(target, ref)
        return name

    def merge_all_of(self, schema: dict[str, Any], path: str) -> dict[str, Any]:
        parts = schema["allOf"]
        if not isinstance(parts, list) or not parts:
            raise _bad(f"{path}.allOf", "'allOf' must be a non-empty array")
        merged: dict[str, Any] = {k: v for k, v in schema.items() if k != "allOf"}
        props: dict[str, Any] = dict(merged.get("properties", {}))
        required: list[str] = list(merged.get("required", []))
        for i, part in enumerate(parts):
            while isinstance(part, dict) and "$ref" in part and len(part) == 1:
                part = self.resolve(part["$ref"], f"{path}.allOf[{i}]")
            if not isinstance(part, dict) or part.get("type", "object") != "object" or \
                    set(part) - {"type", "properties", "required", "additionalProperties"} \
                    - ANNOTATIONS:
                raise _bad(f"{path}.allOf[{i}]", "'allOf' is supported only for object "
                           "schemas with properties")
            props.update(part.get("properties", {}))
            required += [r for r in part.get("required", []) if r not in required]
            if "additionalProperties" in part:
                merged["additionalProperties"] = part["additionalProperties"]
        merged.update({"type": "object", "properties": props, "required": required})
        return merged

    def resolve(self, ref: str, path: str) -> Any:
        target: Any = self.root
        if ref != "#":
            for part in ref.removeprefix("#/").split("/"):
                if not isinstance(target, dict) or part not in target:
                    raise _bad(f"{path}.$ref", f"'{ref}' points to nothing")
                target = target[part]
        return target


def repeat(item: str, low: int, high: int | None) -> str:
    """``item`` repeated ``low`` to ``high`` (None: unbounded) times."""
    if high is None:
        return f"{item}{{{low},}}" if low else f"{item}*"
    if low == high:
        return f"{item}{{{low}}}" if low != 1 else item
    return f"{item}{{{low},{high}}}"


def schema_grammar(schema: Any, *, strict: bool = False) -> str:
    """The whole grammar of one JSON answer valid against ``schema``."""
    out = GrammarBuilder()
    top = out.add_schema(schema, "s", strict=strict)
    return out.text(top)
