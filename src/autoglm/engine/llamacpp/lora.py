"""LoRA adapters on the loaded base, in the engine process.

Each adapter file is loaded once against the one copy of the base weights (llama.cpp
keeps only the adapter's small A/B matrices; the base is never loaded twice). An adapter
applies to the whole context, that is to every sequence of a ``llama_decode``, so the
scheduler decodes the requests of one adapter at a time and calls ``apply`` when it
moves to another group. An adapter whose recorded base digest differs from the loaded
base is refused at load.
"""

from __future__ import annotations

import ctypes
from pathlib import Path

import llama_cpp

from autoglm.engine.llamacpp.model import LlamaModel
from autoglm.errors import ConfigError

BASE_KEY = b"autoglm.adapter.base_sha256"  # finetune/export.py writes it


def _meta(adapter: object, key: bytes) -> str | None:
    buf = ctypes.create_string_buffer(256)
    n = llama_cpp.llama_adapter_meta_val_str(adapter, key, buf, ctypes.sizeof(buf))
    return buf.value.decode() if n >= 0 else None


class AdapterSet:
    def __init__(self, model: LlamaModel) -> None:
        self.model = model
        self.loaded: dict[str, object] = {}
        self.active: str | None = None  # None: the base alone
        self.switches = 0

    @property
    def names(self) -> list[str]:
        return sorted(self.loaded)

    def load(self, name: str, path: Path, base_sha256: str | None) -> None:
        """Load ``path`` as adapter ``name``; refused unless it was trained on the loaded
        base (``base_sha256``, when the gateway knows the base's digest)."""
        if not path.is_file():
            raise ConfigError(f"adapter '{name}': file not found: {path}")
        adapter = llama_cpp.llama_adapter_lora_init(self.model.model, str(path).encode())
        if not adapter:
            raise ConfigError(f"llama.cpp could not load adapter '{name}' from {path}: not a "
                              "LoRA adapter for this model's architecture and shapes")
        recorded = _meta(adapter, BASE_KEY)
        if base_sha256 and recorded and recorded != base_sha256:
            llama_cpp.llama_adapter_lora_free(adapter)
            raise ConfigError(f"adapter '{name}' was trained on another base (sha256 "
                              f"{recorded[:12]}...), not the loaded one ({base_sha256[:12]}...)")
        self.loaded[name] = adapter

    def apply(self, name: str | None) -> None:
        """Make ``name`` (None: no adapter) the one the next decode uses."""
        if name == self.active:
            return
        ctx = self.model.ctx
        if name is None:
            rc = llama_cpp.llama_set_adapters_lora(ctx, None, 0, None)
        else:
            adapters = (llama_cpp.llama_adapter_lora_p_ctypes * 1)(self.loaded[name])
            scales = (ctypes.c_float * 1)(1.0)
            rc = llama_cpp.llama_set_adapters_lora(ctx, adapters, 1, scales)
        if rc != 0:
            raise RuntimeError(f"llama.cpp could not apply adapter {name!r} ({rc})")
        self.active = name
        self.switches += 1
