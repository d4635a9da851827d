"""API key format and hashing.

A key is ``agk_`` + 43 base62 characters of secret (>= 32 random bytes) + 6 base62
characters of CRC32 checksum, so secret scanners can recognise a leaked key and reject
typos without a lookup. Only a keyed hash (HMAC-SHA256 with the server's pepper, kept
in the data directory with mode 0600) is ever stored.
"""

from __future__ import annotations

import hmac
import os
import secrets
import zlib
from pathlib import Path

PREFIX = "agk_"
_ALPHABET = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
_SECRET_LEN = 43  # 62**43 > 2**256
_CHECK_LEN = 6  # 62**6 > 2**32


def _b62(n: int, width: int) -> str:
    out = []
    for _ in range(width):
        n, r = divmod(n, 62)
        out.append(_ALPHABET[r])
    return "".join(reversed(out))


def _checksum(body: str) -> str:
    return _b62(zlib.crc32(body.encode()), _CHECK_LEN)


def generate_key() -> str:
    body = _b62(secrets.randbits(256), _SECRET_LEN)
    return PREFIX + body + _checksum(body)


def well_formed(key: str) -> bool:
    """Shape and checksum only; says nothing about whether the key exists."""
    if not key.startswith(PREFIX) or len(key) != len(PREFIX) + _SECRET_LEN + _CHECK_LEN:
        return False
    body, check = key[len(PREFIX) : -_CHECK_LEN], key[-_CHECK_LEN:]
    if any(c not in _ALPHABET for c in body):
        return False
    return hmac.compare_digest(_checksum(body), check)


def display(key: str) -> str:
    """What is stored to recognise a key: its first characters, never more than a quarter
    of it (so even a short secret is never stored whole)."""
    return key[: min(8, len(key) // 4)] + "…"


def hash_key(pepper: bytes, key: str) -> str:
    return hmac.digest(pepper, key.encode(), "sha256").hex()  # one-shot: the C fast path


def write_secret_file(path: Path, data: bytes) -> None:
    """Create ``path`` with mode 0600 atomically (never chmod after writing)."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def load_or_create_pepper(path: Path) -> bytes:
    try:
        return bytes.fromhex(path.read_text().strip())
    except FileNotFoundError:
        pepper = secrets.token_bytes(32)
        write_secret_file(path, pepper.hex().encode())
        return pepper
