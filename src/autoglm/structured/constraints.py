"""What constrains an answer of the embedded engine: a JSON schema, tools, or both, as
one grammar; compiled once per distinct request shape and kept (LRU).

Checking happens here, in the gateway, before the request queues: a malformed schema or
a keyword the grammar cannot enforce is a 400 naming it, and the engine gets a grammar
text that is known to be whole.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

import orjson

from autoglm.errors import InvalidRequestError
from autoglm.structured.schema import GrammarBuilder, schema_grammar
from autoglm.structured.tools import ToolSet, tool_grammar


@dataclass(frozen=True)
class Constraint:
    grammar: str
    trigger: str | None  # lazy: the grammar applies from this text on
    compile_ms: float


class ConstraintCache:
    def __init__(self, size: int = 256) -> None:
        self.size = size
        self._items: OrderedDict[bytes, Constraint] = OrderedDict()
        self._lock = threading.Lock()
        self.hits = 0
        self.misses = 0

    def get(self, schema: dict[str, Any] | None, strict: bool,
            tools: ToolSet | None) -> Constraint | None:
        """The grammar for a JSON-schema answer (``schema``), tool calls (``tools``, when
        active), or either; None when nothing constrains the answer."""
        active = tools is not None and tools.active
        if schema is None and not active:
            return None
        try:
            key = orjson.dumps([schema, strict, tools and [
                tools.choice, tools.parallel,
                [(f.name, f.parameters, f.strict) for f in tools.offered()]] if active
                else None], option=orjson.OPT_SORT_KEYS)
        except TypeError:
            raise InvalidRequestError("the schema holds values JSON cannot carry",
                                      param="response_format") from None
        with self._lock:
            hit = self._items.get(key)
            if hit is not None:
                self._items.move_to_end(key)
                self.hits += 1
                return hit
        t0 = time.perf_counter()
        made = self._compile(schema, strict, tools if active else None)
        built = Constraint(made[0], made[1], (time.perf_counter() - t0) * 1e3)
        with self._lock:
            self.misses += 1
            self._items[key] = built
            if len(self._items) > self.size:
                self._items.popitem(last=False)
        return built

    @staticmethod
    def _compile(schema: dict[str, Any] | None, strict: bool,
                 tools: ToolSet | None) -> tuple[str, str | None]:
        if tools is None:
            return schema_grammar(schema, strict=strict), None
        if schema is None:
            return tool_grammar(tools)
        out = GrammarBuilder()
        answer = out.add_schema(schema, "s", strict=strict)
        return tool_grammar(tools, (out, answer))
