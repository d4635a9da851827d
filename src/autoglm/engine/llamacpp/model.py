"""A loaded GGUF model and its llama.cpp context, through llama.cpp's low-level API.

Only the engine process imports this module: it owns the model memory. The context is
created with ``n_seq_max = slots`` so several sequences share one ``llama_decode``.
"""

from __future__ import annotations

import ctypes
import os
from dataclasses import dataclass
from pathlib import Path

import llama_cpp

from autoglm.errors import ConfigError


@dataclass(frozen=True)
class ContextConfig:
    slots: int
    ctx_per_slot: int
    n_batch: int
    n_threads: int

    @property
    def threads(self) -> int:
        """Configured threads, else the cores this process may run on (taskset, cgroups)."""
        return self.n_threads or len(os.sched_getaffinity(0)) or 1


def _quiet_log(level: int, text: bytes, user_data: ctypes.c_void_p) -> None:
    """llama.cpp's own log lines are dropped: they are noisy and not JSON."""


# llama.cpp keeps the log callback for the whole process, so the ctypes object must live
# as long (a constant, never changed). Tying it to a model object let llama.cpp call freed
# memory once that model was collected.
QUIET_LOG = llama_cpp.llama_log_callback(_quiet_log)


def load_weights(source: str, *, mmap: bool = True) -> object:
    """A llama.cpp model loaded from ``source`` (a path, or ``/proc/self/fd/N``).
    ``mmap=False`` reads the weights into memory, so later writes to the file cannot
    reach them (what the load-time integrity check needs)."""
    llama_cpp.llama_log_set(QUIET_LOG, ctypes.c_void_p(0))
    llama_cpp.llama_backend_init()
    mparams = llama_cpp.llama_model_default_params()
    mparams.n_gpu_layers = 0
    mparams.use_mmap = mmap
    model = llama_cpp.llama_model_load_from_file(source.encode(), mparams)
    if not model:
        raise ConfigError(f"llama.cpp could not load {source}: not a valid GGUF model?")
    return model


def free_weights(model: object) -> None:
    llama_cpp.llama_model_free(model)


class LlamaModel:
    """Model weights, vocabulary, and one multi-sequence context."""

    def __init__(self, path: Path, config: ContextConfig, *, weights: object = None) -> None:
        """``weights``: weights already loaded from ``path`` (``load_weights``), e.g. by
        the load-time integrity check; otherwise they are loaded here."""
        if not path.is_file():
            raise ConfigError(f"model file not found: {path}")
        self.path = path
        self.config = config
        model = weights if weights is not None else load_weights(str(path))
        self.model = model
        self.vocab = llama_cpp.llama_model_get_vocab(model)
        cparams = llama_cpp.llama_context_default_params()
        cparams.n_ctx = config.slots * config.ctx_per_slot
        cparams.n_batch = config.n_batch
        cparams.n_ubatch = config.n_batch
        cparams.n_seq_max = config.slots
        cparams.n_threads = config.threads
        cparams.n_threads_batch = config.threads
        # Flash attention off: on CPU it is no faster for these models, and its kernels
        # round differently by how many prompt tokens a step holds, so a prompt whose
        # prefix came from the cache could get another answer at temperature 0. Without
        # it a token's values do not depend on the step's size, provided the sequence has
        # at least two tokens in it (prefix.py keeps two to prefill; scheduler.py never
        # feeds a prompt one token at a time).
        cparams.flash_attn_type = llama_cpp.LLAMA_FLASH_ATTN_TYPE_DISABLED
        ctx = llama_cpp.llama_init_from_model(model, cparams)
        if not ctx:
            llama_cpp.llama_model_free(model)
            raise ConfigError(f"llama.cpp could not create a context for {path}")
        self.ctx = ctx
        self.memory = llama_cpp.llama_get_memory(ctx)
        self.n_vocab = llama_cpp.llama_vocab_n_tokens(self.vocab)
        self.n_ctx_train = llama_cpp.llama_model_n_ctx_train(model)
        self._pieces: dict[int, bytes] = {}
        self._piece_buf = ctypes.create_string_buffer(256)

    # --- metadata ---------------------------------------------------------------------
    def meta(self, key: str) -> str | None:
        buf = ctypes.create_string_buffer(1 << 16)
        n = llama_cpp.llama_model_meta_val_str(self.model, key.encode(), buf, ctypes.sizeof(buf))
        if n < 0:
            return None
        if n >= ctypes.sizeof(buf):  # value longer than the buffer: ask again with room
            buf = ctypes.create_string_buffer(n + 1)
            llama_cpp.llama_model_meta_val_str(self.model, key.encode(), buf, n + 1)
        return buf.value.decode("utf-8", errors="replace")

    @property
    def chat_template(self) -> str | None:
        raw = llama_cpp.llama_model_chat_template(self.model, None)
        return raw.decode("utf-8") if raw else None

    def token_text(self, token: int) -> str:
        return self.piece(token, special=True).decode("utf-8", errors="replace")

    @property
    def bos_text(self) -> str:
        return self.token_text(llama_cpp.llama_vocab_bos(self.vocab))

    @property
    def eos_text(self) -> str:
        return self.token_text(llama_cpp.llama_vocab_eos(self.vocab))

    # --- tokens -----------------------------------------------------------------------
    def tokenize(self, text: str, *, add_special: bool, parse_special: bool) -> list[int]:
        data = text.encode("utf-8")
        cap = len(data) + 8
        buf = (llama_cpp.llama_token * cap)()
        n = llama_cpp.llama_tokenize(self.vocab, data, len(data), buf, cap, add_special, parse_special)
        if n < 0:
            cap = -n
            buf = (llama_cpp.llama_token * cap)()
            n = llama_cpp.llama_tokenize(
                self.vocab, data, len(data), buf, cap, add_special, parse_special
            )
        return list(buf[:n])

    def piece(self, token: int, *, special: bool = False) -> bytes:
        """Bytes of one token; cached, since the same tokens come back all the time."""
        if not special:
            cached = self._pieces.get(token)
            if cached is not None:
                return cached
        buf = self._piece_buf
        n = llama_cpp.llama_token_to_piece(self.vocab, token, buf, len(buf), 0, special)
        if n < 0:
            buf = ctypes.create_string_buffer(-n)
            n = llama_cpp.llama_token_to_piece(self.vocab, token, buf, len(buf), 0, special)
        out = buf.raw[:n]
        if not special:
            self._pieces[token] = out
        return out

    def is_eog(self, token: int) -> bool:
        return bool(llama_cpp.llama_vocab_is_eog(self.vocab, token))

    # --- decoding ---------------------------------------------------------------------
    def warm_up(self) -> None:
        """Run one small decode so the weights are in memory before the first request."""
        tokens = self.tokenize("Hello, world.", add_special=True, parse_special=False)[:8]
        batch = Batch(len(tokens))
        try:
            for i, tok in enumerate(tokens):
                batch.add(tok, i, 0, i == len(tokens) - 1)
            batch.decode(self)
        finally:
            batch.free()
            self.clear_sequence(0)

    def clear_sequence(self, seq_id: int) -> None:
        llama_cpp.llama_memory_seq_rm(self.memory, seq_id, -1, -1)

    # --- sequences kept for prefix reuse (prefix.py) ------------------------------------
    def trim_sequence(self, seq_id: int, keep: int) -> bool:
        """Keep positions ``0..keep-1`` of the sequence; False if llama.cpp cannot."""
        return bool(llama_cpp.llama_memory_seq_rm(self.memory, seq_id, keep, -1))

    def copy_sequence(self, src: int, dst: int) -> None:
        """``dst`` becomes a copy of ``src``. With one KV stream per sequence llama.cpp
        copies the whole stream, and does it at the start of the next ``llama_decode``."""
        llama_cpp.llama_memory_seq_rm(self.memory, dst, -1, -1)
        llama_cpp.llama_memory_seq_cp(self.memory, src, dst, -1, -1)

    def save_sequence(self, seq_id: int) -> ctypes.Array | None:
        """The sequence's KV state as bytes in host memory (None if llama.cpp fails)."""
        size = llama_cpp.llama_state_seq_get_size(self.ctx, seq_id)
        if size <= 0:
            return None
        buf = (ctypes.c_uint8 * size)()
        got = llama_cpp.llama_state_seq_get_data(self.ctx, buf, size, seq_id)
        return buf if got == size else None

    def load_sequence(self, seq_id: int, data: ctypes.Array) -> bool:
        """Replace the sequence with a state ``save_sequence`` returned."""
        self.clear_sequence(seq_id)
        if llama_cpp.llama_state_seq_set_data(self.ctx, data, len(data), seq_id) > 0:
            return True
        self.clear_sequence(seq_id)
        return False

    def close(self) -> None:
        if self.ctx:
            llama_cpp.llama_free(self.ctx)
            self.ctx = None
        if self.model:
            llama_cpp.llama_model_free(self.model)
            self.model = None


class Batch:
    """A reusable ``llama_batch`` that holds tokens of several sequences."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self.raw = llama_cpp.llama_batch_init(capacity, 0, 1)
        self.n = 0

    def clear(self) -> None:
        self.n = 0

    def add(self, token: int, pos: int, seq_id: int, logits: bool) -> int:
        """Append a token; return its index (the one to sample from when ``logits``)."""
        i = self.n
        raw = self.raw
        raw.token[i] = token
        raw.pos[i] = pos
        raw.n_seq_id[i] = 1
        raw.seq_id[i][0] = seq_id
        raw.logits[i] = logits
        self.n = i + 1
        return i

    def decode(self, model: LlamaModel) -> int:
        self.raw.n_tokens = self.n
        return int(llama_cpp.llama_decode(model.ctx, self.raw))

    def free(self) -> None:
        llama_cpp.llama_batch_free(self.raw)
