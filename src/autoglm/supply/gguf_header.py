"""Where a GGUF file's header ends: the bytes llama.cpp parses (metadata and tensor
descriptions) before the tensor data, which it only copies.

Recording the header's own SHA-256 in the manifest lets the engine verify everything it
parses before parsing it, then load the tensor data while the whole file's hash is still
being computed (``supply/integrity.py``): the load waits for the header check only.
"""

from __future__ import annotations

import struct
from typing import BinaryIO

_SCALAR = {0: 1, 1: 1, 2: 2, 3: 2, 4: 4, 5: 4, 6: 4, 7: 1, 10: 8, 11: 8, 12: 8}
_STRING, _ARRAY = 8, 9
MAX_HEADER = 1 << 30  # a header larger than this is not a model we will take apart


class NotGguf(ValueError):
    """The bytes are not a GGUF header this module understands."""


class _Reader:
    def __init__(self, fh: BinaryIO) -> None:
        self.fh = fh
        self.pos = 0

    def take(self, n: int) -> bytes:
        data = self.fh.read(n)
        if len(data) != n:
            raise NotGguf("truncated header")
        self.pos += n
        if self.pos > MAX_HEADER:
            raise NotGguf("header larger than 1 GiB")
        return data

    def u32(self) -> int:
        return struct.unpack("<I", self.take(4))[0]

    def u64(self) -> int:
        return struct.unpack("<Q", self.take(8))[0]

    def skip(self, n: int) -> None:
        if n > MAX_HEADER:
            raise NotGguf("implausible length in header")
        self.take(n)

    def string(self) -> bytes:
        return self.take(self.u64())

    def skip_value(self, kind: int) -> int | None:
        """Skip one value; a UINT32/UINT64 scalar's value is returned (the alignment)."""
        if kind in _SCALAR:
            raw = self.take(_SCALAR[kind])
            if kind == 4:
                return struct.unpack("<I", raw)[0]
            return None
        if kind == _STRING:
            self.skip(self.u64())
            return None
        if kind == _ARRAY:
            inner, count = self.u32(), self.u64()
            if inner in _SCALAR:
                self.skip(_SCALAR[inner] * count)
            elif inner == _STRING:
                for _ in range(count):
                    self.skip(self.u64())
            else:
                raise NotGguf(f"array of type {inner}")
            return None
        raise NotGguf(f"value of type {kind}")


def header_size(fh: BinaryIO) -> int:
    """Bytes from the start of the file to the start of the tensor data (aligned)."""
    r = _Reader(fh)
    if r.take(4) != b"GGUF":
        raise NotGguf("no GGUF magic")
    version = r.u32()
    if version not in (2, 3):
        raise NotGguf(f"GGUF version {version}")
    n_tensors, n_kv = r.u64(), r.u64()
    alignment = 32
    for _ in range(n_kv):
        key = r.string()
        value = r.skip_value(r.u32())
        if key == b"general.alignment" and value:
            alignment = value
    for _ in range(n_tensors):
        r.string()
        r.skip(8 * r.u32())  # dimensions
        r.skip(4 + 8)  # type, offset
    return -(-r.pos // alignment) * alignment
