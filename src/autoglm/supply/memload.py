"""Loading an encrypted model package without its plaintext touching a disk.

The engine process decrypts the package (``supply/encryption.py``) into a memfd: an
anonymous file in memory (``memfd_create``) that has no name in any file system, so no
other process can find it by a path, and that goes away with the last reference to it.
An unlinked file on tmpfs (``/dev/shm``) would live in the same memory, but it has a
name until it is unlinked (a window in which another process could open it) and a
crash in between leaves it behind; a memfd never has either. Every chunk is authenticated
and the whole plaintext hashed before llama.cpp parses a byte; the memfd is then sealed
(no write, grow or shrink, ever again) and llama.cpp maps it through ``/proc/self/fd/N``.
Mapping it means the weights are not copied a second time: the plaintext costs its size
once, as shared memory of the engine process (it counts as ``Shmem``/``RssShmem``), for
as long as the model is loaded. Core dumps are turned off for the process (they would
write the weights to disk); swap, if the machine has any, could still page shared
memory out (run without swap, or with encrypted swap).
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import resource
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from autoglm.errors import ConfigError, IntegrityError
from autoglm.supply.encryption import decrypt_chunks, read_header
from autoglm.supply.integrity import StartedHash
from autoglm.timefmt import stamp

T = TypeVar("T")
SEALS = fcntl.F_SEAL_SEAL | fcntl.F_SEAL_SHRINK | fcntl.F_SEAL_GROW | fcntl.F_SEAL_WRITE
MEMFD_NAME = "autoglm-model"


def _write_all(fd: int, data: bytes | memoryview) -> None:
    view = memoryview(data)
    while view:
        n = os.write(fd, view)
        view = view[n:]


def decrypt_to_memfd(source: Path | StartedHash, key: X25519PrivateKey, *,
                     sha256: str | None = None, size: int | None = None,
                     plain_sha256: str | None = None) -> tuple[int, dict[str, Any]]:
    """A sealed memfd holding the package's plaintext, and a record of the checks:
    every chunk authenticated, the plaintext's SHA-256 equal to the header's (and to
    ``plain_sha256``, the registry's, when given), the package's own SHA-256 equal to
    ``sha256`` when given. IntegrityError (naming the byte offset of a chunk that fails)
    otherwise, with nothing left behind.

    ``source``: the package's path, or a ``StartedHash`` of it (the engine starts one
    before its imports): the package's own SHA-256 is then computed on that thread, from
    the same open file, while this one decrypts."""
    if not hasattr(os, "memfd_create"):
        raise ConfigError("encrypted models need memfd_create (Linux): there is no other "
                          "way here to load them without writing the plaintext to a file")
    started = time.perf_counter()
    hashing = source if isinstance(source, StartedHash) else None
    if hashing is None and sha256:
        hashing = StartedHash(Path(source))  # type: ignore[arg-type]
    if hashing is not None:
        path, fd = hashing.pinned.path, hashing.pinned.fd
    else:
        path = Path(source)  # type: ignore[arg-type]
        try:
            fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        except OSError as exc:
            raise IntegrityError(f"cannot open {path}: {exc.strerror}") from None
    memfd = -1
    digest = None
    try:
        have = os.fstat(fd).st_size
        if size is not None and have != size:
            raise IntegrityError(f"refusing {path}: it is {have} bytes, the registered "
                                 f"package has {size} (truncated or changed)")
        header = read_header(fd, str(path))
        expected = header.meta["plain_sha256"]
        if plain_sha256 and plain_sha256 != expected:
            raise IntegrityError(f"refusing {path}: its header's plaintext SHA-256 differs "
                                 "from the registered one (another package)")
        data_key = header.unwrap(key, str(path))
        plain = hashlib.sha256()
        memfd = os.memfd_create(MEMFD_NAME, os.MFD_CLOEXEC | os.MFD_ALLOW_SEALING)
        os.ftruncate(memfd, header.plain_size)
        for block in decrypt_chunks(fd, header, data_key, str(path)):
            plain.update(block)
            _write_all(memfd, block)
        if plain.hexdigest() != expected:
            raise IntegrityError(f"refusing {path}: its plaintext's SHA-256 differs from the "
                                 "one in its header")
        if hashing is not None:
            digest = hashing.digest()
            if digest != sha256:
                raise IntegrityError(f"refusing {path}: its SHA-256 is {digest[:16]}…, the "
                                     f"registered package's is {sha256[:16]}…")
            if not hashing.pinned.unchanged():
                raise IntegrityError(f"refusing {path}: the package was written or replaced "
                                     "while it was decrypted")
        fcntl.fcntl(memfd, fcntl.F_ADD_SEALS, SEALS)
    except BaseException:
        if memfd >= 0:
            os.close(memfd)
        raise
    finally:
        if hashing is not None:
            hashing.close()
        else:
            os.close(fd)
    return memfd, {
        "sha256": digest,
        "bytes": have,
        "plain_sha256": expected,
        "plain_bytes": header.plain_size,
        "chunks_authenticated": -(-header.plain_size // header.chunk_size),
        "decrypt_ms": round((time.perf_counter() - started) * 1000, 1),
        "in_memory": "memfd (sealed)",
    }


def load_encrypted(source: Path | StartedHash, key: X25519PrivateKey, load: Callable[[str], T], *,
                   sha256: str | None = None, size: int | None = None,
                   plain_sha256: str | None = None) -> tuple[T, dict[str, Any], int]:
    """Decrypt into a sealed memfd, then ``load`` it (mapped, not copied) from
    ``/proc/self/fd/N``. Returns what ``load`` gave, the record of the checks, and the
    memfd (kept open by the caller for as long as the model is loaded)."""
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))  # a core dump would hold the weights
    memfd, record = decrypt_to_memfd(source, key, sha256=sha256, size=size,
                                     plain_sha256=plain_sha256)
    loaded_at = time.perf_counter()
    try:
        loaded = load(f"/proc/self/fd/{memfd}")
    except BaseException:
        os.close(memfd)
        raise
    record["load_ms"] = round((time.perf_counter() - loaded_at) * 1000, 1)
    record["checked_at"] = stamp()
    return loaded, record, memfd
