"""The few numbers of a GGUF file's metadata that size its KV cache: layers, KV heads and
head dimensions. Only the key/value section is read, never the tensors."""

from __future__ import annotations

import struct
from pathlib import Path
from typing import BinaryIO

_FIXED = {0: "<B", 1: "<b", 2: "<H", 3: "<h", 4: "<I", 5: "<i", 6: "<f", 7: "<?", 10: "<Q",
          11: "<q", 12: "<d"}
_STRING, _ARRAY = 8, 9
_MAX_KV = 1 << 16
_MAX_LEN = 1 << 28


def _take(fh: BinaryIO, n: int) -> bytes:
    if n > _MAX_LEN:
        raise ValueError("implausible length in GGUF metadata")
    data = fh.read(n)
    if len(data) != n:
        raise ValueError("truncated GGUF metadata")
    return data


def _value(fh: BinaryIO, kind: int) -> object:
    if kind in _FIXED:
        fmt = _FIXED[kind]
        return struct.unpack(fmt, _take(fh, struct.calcsize(fmt)))[0]
    if kind == _STRING:
        return _take(fh, struct.unpack("<Q", _take(fh, 8))[0]).decode(errors="replace")
    if kind == _ARRAY:
        inner, count = struct.unpack("<IQ", _take(fh, 12))
        if count > _MAX_LEN:
            raise ValueError("implausible array in GGUF metadata")
        if inner in _FIXED:  # read numbers (per-layer head counts); skip-read the rest
            fmt = _FIXED[inner]
            raw = _take(fh, struct.calcsize(fmt) * count)
            return list(struct.unpack(f"<{count}{fmt[1]}", raw)) if count <= 4096 else None
        for _ in range(count):
            _value(fh, inner)
        return None
    raise ValueError(f"unknown GGUF value type {kind}")


def metadata(path: Path) -> dict[str, object]:
    """Every scalar and numeric-array key of the file's metadata."""
    with path.open("rb") as fh:
        if _take(fh, 4) != b"GGUF":
            raise ValueError(f"{path} is not a GGUF file")
        version, _tensors, kvs = struct.unpack("<IQQ", _take(fh, 20))
        if version < 2 or kvs > _MAX_KV:
            raise ValueError(f"{path}: unsupported GGUF version {version}")
        out: dict[str, object] = {}
        for _ in range(kvs):
            key = _take(fh, struct.unpack("<Q", _take(fh, 8))[0]).decode(errors="replace")
            out[key] = _value(fh, struct.unpack("<I", _take(fh, 4))[0])
        return out


def _num(value: object) -> int:
    if isinstance(value, list):
        return int(max(value, default=0))
    return int(value) if isinstance(value, (int, float)) else 0


def kv_bytes_per_token(path: Path, bytes_per_value: int = 2) -> int:
    """Bytes of KV cache one token takes in llama.cpp (f16 K and V by default)."""
    meta = metadata(path)
    arch = str(meta.get("general.architecture", ""))
    layers = _num(meta.get(f"{arch}.block_count"))
    heads = _num(meta.get(f"{arch}.attention.head_count"))
    kv_heads = _num(meta.get(f"{arch}.attention.head_count_kv")) or heads
    width = _num(meta.get(f"{arch}.embedding_length"))
    head_dim = width // heads if heads else 0
    k_len = _num(meta.get(f"{arch}.attention.key_length")) or head_dim
    v_len = _num(meta.get(f"{arch}.attention.value_length")) or head_dim
    if not (layers and kv_heads and k_len and v_len):
        raise ValueError(f"{path}: metadata does not say its attention shape ({arch})")
    return layers * kv_heads * (k_len + v_len) * bytes_per_value
