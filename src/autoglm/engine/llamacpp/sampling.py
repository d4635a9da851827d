"""Per-request sampler chains built from OpenAI parameters, run inside llama.cpp.

A request with a grammar (``response_format`` json_object or json_schema, tools) keeps
the grammar out of its chain and checks the chain's pick against it: the grammar looks
at one token, not at the whole vocabulary (49,152 tokens for the bundled model), and
only when it refuses the pick is the step sampled again with the grammar applied to
every candidate first. That is what keeps a constrained decode step close to a free
one. Grammars are parsed once per distinct text and cloned per request
(``GrammarCache``). A lazy grammar (tool calls with ``tool_choice: auto``) constrains
nothing until its trigger text appears in the answer.
"""

from __future__ import annotations

import ctypes
import random
import threading
from collections import OrderedDict
from dataclasses import dataclass

import llama_cpp
import numpy as np
from llama_cpp.llama_grammar import JSON_GBNF

from autoglm.engine.llamacpp.model import LlamaModel
from autoglm.errors import InvalidRequestError

_TOKEN_DATA = np.dtype([("id", np.int32), ("logit", np.float32), ("p", np.float32)])
NEG_INF = float("-inf")


@dataclass(frozen=True)
class SamplingParams:
    temperature: float = 1.0
    top_p: float = 1.0
    seed: int | None = None
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    json_object: bool = False
    grammar: str | None = None  # GBNF, root rule "root"
    grammar_trigger: str | None = None  # lazy: the grammar starts where this text appears

    @classmethod
    def from_dict(cls, data: dict) -> SamplingParams:
        return cls(**{k: v for k, v in data.items() if k in cls.__dataclass_fields__})


class GrammarCache:
    """Parsed grammars in their start state, by (text, trigger); ``make`` gives a clone."""

    def __init__(self, model: LlamaModel, size: int = 64) -> None:
        self.model = model
        self.size = size
        self._items: OrderedDict[tuple[str, str | None], ctypes.c_void_p] = OrderedDict()
        self._lock = threading.Lock()
        self.hits = 0
        self.misses = 0

    def make(self, text: str, trigger: str | None) -> ctypes.c_void_p:
        key = (text, trigger)
        with self._lock:
            base = self._items.get(key)
            if base is not None:
                self._items.move_to_end(key)
                self.hits += 1
                return llama_cpp.llama_sampler_clone(base)
            self.misses += 1
            base = parse_grammar(self.model, text, trigger)
            self._items[key] = base
            if len(self._items) > self.size:
                _, old = self._items.popitem(last=False)
                llama_cpp.llama_sampler_free(old)
            return llama_cpp.llama_sampler_clone(base)

    def close(self) -> None:
        with self._lock:
            for grammar in self._items.values():
                llama_cpp.llama_sampler_free(grammar)
            self._items.clear()


def parse_grammar(model: LlamaModel, text: str, trigger: str | None) -> ctypes.c_void_p:
    vocab = model.vocab
    if trigger is None:
        grammar = llama_cpp.llama_sampler_init_grammar(vocab, text.encode(), b"root")
    else:  # the whole answer so far must match: any text, then the trigger, then any
        pattern = "[\\s\\S]*?(" + _regex_escape(trigger) + ")[\\s\\S]*"
        patterns = (ctypes.c_char_p * 1)(pattern.encode())
        grammar = llama_cpp.llama_sampler_init_grammar_lazy_patterns(
            vocab, text.encode(), b"root", patterns, 1, None, 0)
    if not grammar:
        raise InvalidRequestError("the output constraint could not be compiled into a "
                                  "grammar", param="response_format")
    return grammar


def _regex_escape(text: str) -> str:
    return "".join("\\" + c if c in r"\^$.|?*+()[]{}" else c for c in text)


class Sampler:
    """A llama.cpp sampler chain; ``sample`` picks the next token from batch index ``i``."""

    def __init__(self, model: LlamaModel, params: SamplingParams,
                 grammars: GrammarCache | None = None) -> None:
        chain = llama_cpp.llama_sampler_chain_init(llama_cpp.llama_sampler_chain_default_params())
        if not chain:
            raise InvalidRequestError("could not build a sampler for these parameters")
        self._chain = chain
        self._grammar = None
        self._cands: np.ndarray | None = None
        text = params.grammar or (JSON_GBNF if params.json_object else None)
        if text is not None:
            try:
                self._grammar = (grammars.make(text, params.grammar_trigger) if grammars
                                 else parse_grammar(model, text, params.grammar_trigger))
            except InvalidRequestError:
                self.free()
                raise
            self._ids = np.arange(model.n_vocab, dtype=np.int32)
            self._cands = np.zeros(model.n_vocab, dtype=_TOKEN_DATA)
            self._one = (llama_cpp.llama_token_data * 1)()
            self._one_arr = llama_cpp.llama_token_data_array(self._one, 1, -1, False)
        add = lambda s: llama_cpp.llama_sampler_chain_add(chain, s)  # noqa: E731
        self._penalties = bool(params.presence_penalty or params.frequency_penalty)
        if self._penalties:
            add(
                llama_cpp.llama_sampler_init_penalties(
                    model.n_vocab, 64, 1.0, params.frequency_penalty, params.presence_penalty
                )
            )
        if params.temperature <= 0.0:
            add(llama_cpp.llama_sampler_init_greedy())
            return
        if params.top_p < 1.0:
            add(llama_cpp.llama_sampler_init_top_p(params.top_p, 1))
        add(llama_cpp.llama_sampler_init_temp(params.temperature))
        seed = params.seed if params.seed is not None else random.getrandbits(32)
        add(llama_cpp.llama_sampler_init_dist(seed & 0xFFFFFFFF))

    def sample(self, model: LlamaModel, index: int) -> int:
        if self._grammar is None:
            return int(llama_cpp.llama_sampler_sample(self._chain, model.ctx, index))
        if self._penalties:  # stateful: the chain must see only the token kept
            token = self._pick(model, index, with_grammar=False)
            if not self._allowed(token):
                token = self._pick(model, index, with_grammar=True)
            llama_cpp.llama_sampler_accept(self._chain, token)
        else:  # llama.cpp's own path for the pick (it accepts into the stateless chain)
            token = int(llama_cpp.llama_sampler_sample(self._chain, model.ctx, index))
            if not self._allowed(token):
                token = self._pick(model, index, with_grammar=True)
        llama_cpp.llama_sampler_accept(self._grammar, token)
        return token

    def _pick(self, model: LlamaModel, index: int, *, with_grammar: bool) -> int:
        cands = self._cands
        if cands is None:
            raise RuntimeError("no grammar on this sampler")
        n = len(cands)
        logits = llama_cpp.llama_get_logits_ith(model.ctx, index)
        cands["id"] = self._ids
        cands["logit"] = np.ctypeslib.as_array(logits, shape=(n,))
        cands["p"] = 0.0
        arr = llama_cpp.llama_token_data_array(
            cands.ctypes.data_as(ctypes.POINTER(llama_cpp.llama_token_data)), n, -1, False)
        if with_grammar:
            llama_cpp.llama_sampler_apply(self._grammar, ctypes.byref(arr))
        llama_cpp.llama_sampler_apply(self._chain, ctypes.byref(arr))
        if arr.selected < 0 or arr.selected >= arr.size:
            raise InvalidRequestError("the output constraint left no token to choose")
        return int(cands["id"][arr.selected])

    def _allowed(self, token: int) -> bool:
        one = self._one
        one[0].id, one[0].logit, one[0].p = token, 1.0, 0.0
        arr = self._one_arr
        arr.size, arr.selected, arr.sorted = 1, -1, False
        llama_cpp.llama_sampler_apply(self._grammar, ctypes.byref(arr))
        return one[0].logit != NEG_INF

    def free(self) -> None:
        if self._chain:
            llama_cpp.llama_sampler_free(self._chain)
            self._chain = None
        if self._grammar:
            llama_cpp.llama_sampler_free(self._grammar)
            self._grammar = None
