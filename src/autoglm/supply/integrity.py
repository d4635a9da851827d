"""Load-time integrity: the bytes a model is loaded from are the bytes that were hashed.

A model file is opened once (``PinnedFile``). Its SHA-256 is computed by streaming from
that open file, which also warms the page cache for the load that follows; the loader
then reads the same open file through ``/proc/self/fd/N``, so a file renamed or replaced
at its path after the check is never the one loaded. A write into the file itself (same
inode) changes its ``ctime``, which no user can set back (so does unlinking or renaming
over it): the file's identity and timestamps are compared after the load, and any change
refuses the model; the next start checks whatever the path names then.

For a GGUF file whose manifest records its header's hash (``supply/gguf_header.py``),
the header, all that the loader parses, is checked first; the tensor data, which the
loader only copies, is then loaded while the whole file's hash is still being computed,
and the model is refused and unloaded if that hash differs. The engine serves nothing
before both checks pass. Hashing comes
before the loader parses a single byte, so a tampered file never reaches llama.cpp's
parser.
"""

from __future__ import annotations

import hashlib
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from autoglm.errors import IntegrityError
from autoglm.timefmt import stamp

CHUNK = 1 << 20
T = TypeVar("T")


@dataclass(frozen=True)
class Stamp:
    """What changes when a file is written or replaced."""

    dev: int
    ino: int
    size: int
    mtime_ns: int
    ctime_ns: int

    @classmethod
    def of(cls, fd: int) -> Stamp:
        st = os.fstat(fd)
        return cls(st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)


class PinnedFile:
    """A file opened once, hashed and loaded through that one open file."""

    def __init__(self, path: Path) -> None:
        self.path = path
        try:
            self.fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        except OSError as exc:
            raise IntegrityError(f"cannot open {path}: {exc.strerror}") from None
        self.before = Stamp.of(self.fd)

    @property
    def load_path(self) -> str:
        """A path naming this open file (Linux); elsewhere the path itself, so only the
        stamp comparison guards it."""
        proc = f"/proc/self/fd/{self.fd}"
        return proc if os.path.exists(proc) else str(self.path)

    def sha256(self) -> str:
        h = hashlib.sha256()
        buf = bytearray(CHUNK)
        view = memoryview(buf)
        offset = 0
        while n := os.preadv(self.fd, [buf], offset):
            h.update(view[:n])
            offset += n
        return h.hexdigest()

    def unchanged(self) -> bool:
        return Stamp.of(self.fd) == self.before

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


class StartedHash:
    """A file opened, and its SHA-256 begun at once on a thread (hashlib lets go of the GIL
    while it hashes), so the hash overlaps whatever the process does meanwhile: the engine
    process starts it before importing llama.cpp."""

    def __init__(self, path: Path) -> None:
        self.pinned = PinnedFile(path)
        self._digest: str | None = None
        self._error: OSError | None = None
        self.started = time.perf_counter()
        self.finished = self.started
        self._thread = threading.Thread(target=self._run, name="model-hash", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        try:
            self._digest = self.pinned.sha256()
        except OSError as exc:
            self._error = exc
        finally:
            self.finished = time.perf_counter()

    def digest(self) -> str:
        self._thread.join()
        if self._digest is None:
            reason = self._error.strerror if self._error else "unknown error"
            raise IntegrityError(f"cannot read {self.pinned.path}: {reason}")
        return self._digest

    def close(self) -> None:
        self._thread.join()
        self.pinned.close()


def _read_at(fd: int, n: int, offset: int = 0) -> bytes:
    chunks, got = [], 0
    while got < n:
        chunk = os.pread(fd, min(CHUNK * 16, n - got), offset + got)
        if not chunk:
            break
        chunks.append(chunk)
        got += len(chunk)
    return b"".join(chunks)


def load_verified(source: Path | StartedHash, sha256: str, size: int | None,
                  load: Callable[[str], T], unload: Callable[[T], None],
                  header: tuple[int, str] | None = None) -> tuple[T, dict[str, Any]]:
    """Hash the file (``source``: a path, or a hash already under way), then ``load`` it
    through the same open file; refuse (IntegrityError) when the bytes differ from
    ``sha256`` or the file changed between the hash and the end of the load.

    ``header`` (length, SHA-256 of a GGUF file's header, from the manifest): everything
    the loader parses is checked first, then the tensor data is loaded while the whole
    file's hash is still being computed, and the model is refused (unloaded) if that hash
    differs. Returns what ``load`` gave and a record of the check."""
    hashing = source if isinstance(source, StartedHash) else StartedHash(source)
    pinned, path = hashing.pinned, hashing.pinned.path
    try:
        if size is not None and pinned.before.size != size:
            raise IntegrityError(
                f"refusing {path}: it is {pinned.before.size} bytes, the verified file has "
                f"{size} (the file was changed)")
        changed = "(the file was changed); run `autoglm model verify`"
        if header is None:
            digest = hashing.digest()
            if digest != sha256:
                raise IntegrityError(f"refusing {path}: its SHA-256 is {digest[:16]}…, the "
                                     f"verified file's is {sha256[:16]}… {changed}")
        else:
            n, expected = header
            head = hashlib.sha256(_read_at(pinned.fd, n)).hexdigest()
            if head != expected:
                raise IntegrityError(f"refusing {path}: the SHA-256 of its header (what "
                                     f"llama.cpp parses) differs from the verified one {changed}")
        hashed = time.perf_counter()
        loaded = load(pinned.load_path)
        if header is not None:
            digest = hashing.digest()
            if digest != sha256:
                unload(loaded)
                raise IntegrityError(f"refusing {path}: its SHA-256 is {digest[:16]}…, the "
                                     f"verified file's is {sha256[:16]}… {changed}")
        if not pinned.unchanged():
            unload(loaded)
            raise IntegrityError(f"refusing {path}: the file was written or replaced while it "
                                 "was loaded")
        return loaded, {
            "sha256": digest,
            "bytes": pinned.before.size,
            "hash_ms": round((hashing.finished - hashing.started) * 1000, 1),
            "load_ms": round((time.perf_counter() - hashed) * 1000, 1),
            "header_first": header is not None,
            "checked_at": stamp(),
        }
    finally:
        hashing.close()


def _stamps(root: Path, rels: list[str]) -> dict[str, Stamp | None]:
    out: dict[str, Stamp | None] = {}
    for rel in rels:
        try:
            st = os.lstat(root / rel)
        except OSError:
            out[rel] = None
            continue
        out[rel] = Stamp(st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)
    return out


class VerifiedTree:
    """A model directory that another program loads (vLLM): every file hashed against
    the manifest before each start unless no file changed since the last full check (a
    change always moves a file's ctime), nothing unlisted in it, and after the load the
    same stamps again, so no file can change between the check and the end of the load."""

    def __init__(self, root: Path, files: dict[str, tuple[int, str]]) -> None:
        self.root = root
        self.files = files  # relative path -> (size, sha256)
        self._checked: dict[str, Stamp | None] | None = None
        self.record: dict[str, Any] = {}

    def _extra(self) -> list[str]:
        from autoglm.supply.manifest import model_files  # a leaf module; no import cycle

        present = {p.relative_to(self.root).as_posix() for p in model_files(self.root)}
        return sorted(present - set(self.files))

    def unchanged(self) -> bool:
        return (self._checked is not None and not self._extra()
                and _stamps(self.root, sorted(self.files)) == self._checked)

    def ensure(self) -> dict[str, Any]:
        """Check (IntegrityError when anything differs) and return the record of the last
        full check."""
        extra = self._extra()
        if extra:
            raise IntegrityError(f"refusing {self.root}: {', '.join(extra[:3])} not in the "
                                 "model's manifest")
        if self.unchanged():
            return self.record
        started = time.perf_counter()
        before = _stamps(self.root, sorted(self.files))
        total = 0
        for rel, (size, sha256) in sorted(self.files.items()):
            pinned = PinnedFile(self.root / rel)
            try:
                if pinned.before.size != size or pinned.sha256() != sha256:
                    raise IntegrityError(f"refusing {self.root}: {rel} does not hash to its "
                                         "manifest's SHA-256 (the file was changed)")
                total += size
            finally:
                pinned.close()
        if _stamps(self.root, sorted(self.files)) != before:
            raise IntegrityError(f"refusing {self.root}: a file was written while it was hashed")
        self._checked = before
        self.record = {"bytes": total, "files": len(self.files),
                       "hash_ms": round((time.perf_counter() - started) * 1000, 1),
                       "checked_at": stamp()}
        return self.record
