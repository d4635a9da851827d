"""SHA-256 manifests of model files, and verifying files against them.

Hashing streams each file through one reusable buffer (``readinto``: the bytes are hashed
as they are read, never copied into new objects), so it runs near ``sha256sum`` speed and
in constant memory whatever the model's size.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from autoglm.supply.gguf_header import NotGguf, header_size
from autoglm.timefmt import stamp

CHUNK = 1 << 20  # 1 MiB reads: large enough that per-call overhead vanishes
MANIFEST_VERSION = 1
IGNORED = {".git", ".cache", "autoglm-manifest.json", "autoglm-manifest.sig"}

Progress = Callable[[int], None]  # called with bytes hashed since the last call


def sha256_file(path: Path, progress: Progress | None = None) -> str:
    h = hashlib.sha256()
    buf = bytearray(CHUNK)
    view = memoryview(buf)
    with path.open("rb", buffering=0) as fh:
        while True:
            n = fh.readinto(buf)
            if not n:
                break
            h.update(view[:n])
            if progress is not None:
                progress(n)
    return h.hexdigest()


def model_files(root: Path) -> list[Path]:
    """Every file of a model: one file, or a directory's files (sorted, relative order)."""
    if root.is_file():
        return [root]
    out = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if d not in IGNORED)
        for name in sorted(filenames):
            if name not in IGNORED and not name.endswith((".incomplete", ".lock")):
                out.append(Path(dirpath) / name)
    return out


def _rel(root: Path, path: Path) -> str:
    return path.name if root.is_file() else path.relative_to(root).as_posix()


def gguf_header(path: Path) -> dict[str, Any] | None:
    """A GGUF file's header (what llama.cpp parses): its length and SHA-256, so the load
    can check it first and copy the tensor data while the whole file is still being hashed
    (``supply/integrity.py``). None for other files."""
    if path.suffix != ".gguf":
        return None
    try:
        with path.open("rb") as fh:
            n = header_size(fh)
            fh.seek(0)
            data = fh.read(n)
    except (OSError, NotGguf):
        return None
    if len(data) != n:
        return None
    return {"bytes": n, "sha256": hashlib.sha256(data).hexdigest()}


def file_entry(root: Path, path: Path, sha256: str, size: int) -> dict[str, Any]:
    entry: dict[str, Any] = {"path": _rel(root, path), "size": size, "sha256": sha256}
    header = gguf_header(path)
    if header is not None:
        entry["header"] = header
    return entry


def build(root: Path, *, source: str = "local", revision: str | None = None,
          progress: Progress | None = None) -> dict[str, Any]:
    files = []
    for path in model_files(root):
        files.append(file_entry(root, path, sha256_file(path, progress), path.stat().st_size))
    return {"version": MANIFEST_VERSION, "created_at": stamp(),
            "source": source, "revision": revision, "files": files,
            "total_size": sum(f["size"] for f in files)}


@dataclass
class Verification:
    changed: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)
    extra: list[str] = field(default_factory=list)

    @property
    def intact(self) -> bool:
        return not (self.changed or self.missing or self.extra)


def verify(root: Path, manifest: dict[str, Any], *, full: bool = True,
           progress: Progress | None = None) -> Verification:
    """Compare files with the manifest. ``full``: re-hash every byte; otherwise sizes only
    (the fast check done at every load)."""
    result = Verification()
    present = {_rel(root, p): p for p in model_files(root)} if root.exists() else {}
    listed = {f["path"]: f for f in manifest.get("files", [])}
    for rel, entry in listed.items():
        path = present.get(rel)
        if path is None:
            result.missing.append(rel)
        elif path.stat().st_size != entry["size"]:
            result.changed.append(rel)
        elif full and sha256_file(path, progress) != entry["sha256"]:
            result.changed.append(rel)
    result.extra = sorted(set(present) - set(listed))
    return result


def copy_file(src: Path, dst: Path, progress: Progress | None = None) -> str:
    """Copy a file and return the SHA-256 of the bytes written (one pass over them)."""
    h = hashlib.sha256()
    buf = bytearray(CHUNK)
    view = memoryview(buf)
    dst.parent.mkdir(parents=True, exist_ok=True)
    with src.open("rb", buffering=0) as fin, dst.open("wb") as fout:
        while n := fin.readinto(buf):
            h.update(view[:n])
            fout.write(view[:n])
            if progress is not None:
                progress(n)
        fout.flush()
        os.fsync(fout.fileno())
    return h.hexdigest()
