"""Perplexity of a GGUF model on a text, computed through llama.cpp.

The scheme is llama.cpp's own (``llama-perplexity``): the text is tokenized once and cut
into consecutive, non-overlapping windows of ``window`` tokens. Each window is decoded
from an empty cache (after BOS, when the model's tokenizer adds one); its first half is
context only, and every token of its second half is scored by the log-probability the
model gave it at the position before. Perplexity is exp of the mean negative
log-likelihood over all scored tokens, so lower is better and 1 is perfect.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from autoglm.errors import ConfigError, EngineError

if TYPE_CHECKING:  # the engine's model module imports llama.cpp
    from autoglm.engine.llamacpp.model import Batch, LlamaModel

Progress = Callable[[int, int], None]  # (windows done, windows in all)


@dataclass(frozen=True)
class Perplexity:
    value: float
    windows: int
    scored_tokens: int
    text_tokens: int


def nll_of_window(logits: np.ndarray, targets: np.ndarray) -> float:
    """Summed negative log-likelihood of ``targets``: row i of ``logits`` is the model's
    output at the position before ``targets[i]``."""
    rows = logits.astype(np.float64)
    peak = rows.max(axis=1, keepdims=True)
    log_z = np.log(np.exp(rows - peak).sum(axis=1)) + peak[:, 0]
    picked = rows[np.arange(len(targets)), targets]
    return float((log_z - picked).sum())


def perplexity(model_path: Path, text: str, *, window: int = 512, max_windows: int = 8,
               threads: int = 0, progress: Progress | None = None) -> Perplexity:
    import llama_cpp

    from autoglm.engine.llamacpp.model import Batch, ContextConfig, LlamaModel

    if window < 16 or window % 2:
        raise ConfigError(f"the perplexity window must be an even number of tokens >= 16, "
                          f"not {window}")
    if max_windows < 1:
        raise ConfigError("at least one perplexity window is needed")
    n_ctx = window + 1  # room for BOS
    model = LlamaModel(model_path, ContextConfig(1, n_ctx, n_ctx, threads))
    batch = Batch(n_ctx)
    try:
        if window > model.n_ctx_train:
            raise ConfigError(f"the window ({window} tokens) is longer than the model's "
                              f"training context ({model.n_ctx_train})")
        tokens = model.tokenize(text, add_special=False, parse_special=False)
        count = min(max_windows, len(tokens) // window)
        if count == 0:
            raise ConfigError(f"the text is {len(tokens)} tokens long; perplexity needs at "
                              f"least one window of {window}")
        bos = ([llama_cpp.llama_vocab_bos(model.vocab)]
               if llama_cpp.llama_vocab_get_add_bos(model.vocab) else [])
        total_nll = 0.0
        scored = 0
        for w in range(count):
            chunk = tokens[w * window:(w + 1) * window]
            total_nll += _score_window(model, batch, bos + chunk, len(bos) + window // 2)
            scored += window - window // 2
            if progress is not None:
                progress(w + 1, count)
    finally:
        batch.free()
        model.close()
    return Perplexity(math.exp(total_nll / scored), count, scored, len(tokens))


def _score_window(model: LlamaModel, batch: Batch, ids: list[int], first: int) -> float:
    """NLL of ``ids[first:]``, each predicted from the logits at the position before."""
    import llama_cpp

    model.clear_sequence(0)
    batch.clear()
    for pos, tok in enumerate(ids):
        batch.add(tok, pos, 0, first - 1 <= pos < len(ids) - 1)
    rc = batch.decode(model)
    if rc != 0:
        raise EngineError(f"llama.cpp could not decode a perplexity window (status {rc})")
    rows = len(ids) - first
    logits = np.ctypeslib.as_array(llama_cpp.llama_get_logits(model.ctx),
                                   shape=(rows, model.n_vocab))
    return nll_of_window(logits, np.asarray(ids[first:], dtype=np.int64))
