"""Per-request sampler chains built from OpenAI parameters, run inside llama.cpp."""

from __future__ import annotations

import random
from dataclasses import dataclass

import llama_cpp
from llama_cpp.llama_grammar import JSON_GBNF

from autoglm.engine.llamacpp.model import LlamaModel
from autoglm.errors import InvalidRequestError


@dataclass(frozen=True)
class SamplingParams:
    temperature: float = 1.0
    top_p: float = 1.0
    seed: int | None = None
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    json_object: bool = False

    @classmethod
    def from_dict(cls, data: dict) -> SamplingParams:
        return cls(**{k: v for k, v in data.items() if k in cls.__dataclass_fields__})


class Sampler:
    """A llama.cpp sampler chain; ``sample`` picks the next token from batch index ``i``."""

    def __init__(self, model: LlamaModel, params: SamplingParams) -> None:
        chain = llama_cpp.llama_sampler_chain_init(llama_cpp.llama_sampler_chain_default_params())
        if not chain:
            raise InvalidRequestError("could not build a sampler for these parameters")
        self._chain = chain
        add = lambda s: llama_cpp.llama_sampler_chain_add(chain, s)  # noqa: E731
        if params.json_object:
            grammar = llama_cpp.llama_sampler_init_grammar(model.vocab, JSON_GBNF.encode(), b"root")
            if not grammar:
                self.free()
                raise InvalidRequestError(
                    "response_format json_object could not be set up", param="response_format"
                )
            add(grammar)
        if params.presence_penalty or params.frequency_penalty:
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
        return int(llama_cpp.llama_sampler_sample(self._chain, model.ctx, index))

    def free(self) -> None:
        if self._chain:
            llama_cpp.llama_sampler_free(self._chain)
            self._chain = None
