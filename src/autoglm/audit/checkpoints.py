"""Signed checkpoints of the chain's head, kept outside the database.

A checkpoint is one JSON line in ``data_dir/audit/checkpoints.jsonl``::

    {"seq": 1200, "hash": "<head hash hex>", "ts": "2026-...+00:00",
     "key": "sha256:<public key fingerprint>", "sig": "<base64 Ed25519 signature>"}

signed over ``autoglm-audit-checkpoint-v1\\n{seq}\\n{hash}\\n{ts}``. Lines are appended
with ``O_APPEND`` (one write each, so processes sharing the file never interleave) and
fsynced; optionally each line also goes to syslog, off the host when syslog forwards.
Whoever can edit the database but not this file (or the syslog server) cannot cut the
chain's tail unseen: ``verify`` finds the chain shorter than a checkpoint.

An *anchor* (``"kind": "anchor"``, signed over ``autoglm-audit-anchor-v1\n...``, so no
checkpoint can be turned into one) is written by ``autoglm audit prune`` before it deletes
the records up to ``seq``: the chain then starts after it, from its hash.
"""

from __future__ import annotations

import base64
import binascii
import logging
import logging.handlers
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import orjson
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import (
    Ed25519PrivateKey,
    Ed25519PublicKey,
)

from autoglm.audit.keys import AuditPaths, fingerprint
from autoglm.timefmt import stamp

log = logging.getLogger(__name__)
_DOMAINS = {"checkpoint": b"autoglm-audit-checkpoint-v1", "anchor": b"autoglm-audit-anchor-v1"}


def _message(seq: int, hash_hex: str, ts: str, kind: str = "checkpoint") -> bytes:
    return b"\n".join((_DOMAINS[kind], str(seq).encode(), hash_hex.encode(), ts.encode()))


def signed_line(key: Ed25519PrivateKey, seq: int, hash_hex: str,
                kind: str = "checkpoint") -> bytes:
    """One signed line of the checkpoints file (a checkpoint, or a prune's anchor)."""
    ts = stamp()
    sig = key.sign(_message(seq, hash_hex, ts, kind))
    doc: dict[str, object] = {"seq": seq, "hash": hash_hex, "ts": ts,
                              "key": fingerprint(key.public_key()),
                              "sig": base64.b64encode(sig).decode()}
    if kind != "checkpoint":
        doc["kind"] = kind
    return orjson.dumps(doc) + b"\n"


def append_line(path: Path, line: bytes) -> None:
    """Append one line (one write, O_APPEND) and fsync it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, line)
        os.fsync(fd)
    finally:
        os.close(fd)


@dataclass(frozen=True)
class Checkpoint:
    seq: int
    hash: str
    ts: str
    line: int  # 1-based line number in the file
    anchor: bool = False  # a prune's anchor: the chain starts after it


@dataclass(frozen=True)
class BadLine:
    line: int
    seq: int | None
    reason: str


class Checkpointer:
    """Writes checkpoints: every ``every`` records or ``interval_s`` seconds (whichever
    comes first, only when the head moved) and at close; see ``AuditLog``."""

    def __init__(self, paths: AuditPaths, key: Ed25519PrivateKey, *, every: int,
                 interval_s: float, syslog_address: str | None = None) -> None:
        self.path = paths.checkpoints
        self.every = every
        self.interval_s = interval_s
        self._key = key
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        self.last_seq = -1
        self._last_at = time.monotonic()
        self._syslog = _syslog_handler(syslog_address) if syslog_address else None

    def due(self, head_seq: int, *, force: bool = False) -> bool:
        """Whether to checkpoint a head at ``head_seq`` now (never twice the same, never
        the empty chain)."""
        if head_seq <= 0 or head_seq == self.last_seq:
            return False
        return force or head_seq - max(self.last_seq, 0) >= self.every or self.stale()

    def stale(self) -> bool:
        return time.monotonic() - self._last_at >= self.interval_s

    def write(self, seq: int, hash_hex: str) -> dict[str, object]:
        line = signed_line(self._key, seq, hash_hex)
        doc: dict[str, object] = orjson.loads(line)
        os.write(self._fd, line)
        os.fsync(self._fd)
        self.last_seq = seq
        self._last_at = time.monotonic()
        if self._syslog is not None:
            self._syslog.handle(logging.makeLogRecord(
                {"msg": "autoglm-audit checkpoint %s", "args": (line.decode().rstrip(),),
                 "levelno": logging.INFO, "levelname": "INFO", "name": "autoglm.audit"}))
        return doc

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1
        if self._syslog is not None:
            self._syslog.close()
            self._syslog = None


def _syslog_handler(address: str) -> logging.Handler | None:
    if not os.path.exists(address):
        log.warning("audit_syslog is on but there is no syslog socket at %s; checkpoints "
                    "go to %s only", address, "the checkpoints file")
        return None
    handler = logging.handlers.SysLogHandler(
        address=address, facility=logging.handlers.SysLogHandler.LOG_AUTH)
    handler.setFormatter(logging.Formatter("%(message)s"))
    return handler


def read(path: Path, public_key: Ed25519PublicKey, *,
         limit: int | None = None) -> Iterator[Checkpoint | BadLine]:
    """Each line of the file up to byte ``limit``, checked: a ``Checkpoint`` when it is
    well formed and signed by ``public_key``, else a ``BadLine`` saying why."""
    want = fingerprint(public_key)
    try:
        fh = path.open("rb")
    except FileNotFoundError:
        return
    with fh:
        used = 0
        for number, raw in enumerate(fh, 1):
            used += len(raw)
            if limit is not None and used > limit:
                return
            if not raw.strip():
                continue
            yield _check(number, raw, public_key, want)


def _check(number: int, raw: bytes, public_key: Ed25519PublicKey,
           want: str) -> Checkpoint | BadLine:
    try:
        doc = orjson.loads(raw)
        seq, hash_hex, ts = doc["seq"], doc["hash"], doc["ts"]
        sig = base64.b64decode(doc["sig"], validate=True)
    except (orjson.JSONDecodeError, KeyError, TypeError, binascii.Error):
        return BadLine(number, None, "not a checkpoint line")
    kind = doc.get("kind", "checkpoint")
    if not (isinstance(seq, int) and isinstance(hash_hex, str) and isinstance(ts, str)
            and kind in _DOMAINS):
        return BadLine(number, None, "not a checkpoint line")
    if doc.get("key") != want:
        return BadLine(number, seq, f"signed by another key ({doc.get('key')})")
    try:
        public_key.verify(sig, _message(seq, hash_hex, ts, kind))
    except InvalidSignature:
        return BadLine(number, seq, "signature does not verify")
    return Checkpoint(seq, hash_hex, ts, number, anchor=kind == "anchor")


def latest_anchor(path: Path, public_key: Ed25519PublicKey, *,
                  limit: int | None = None) -> Checkpoint | None:
    """The anchor of the latest prune (highest seq, well signed), if any."""
    best: Checkpoint | None = None
    for entry in read(path, public_key, limit=limit):
        if isinstance(entry, Checkpoint) and entry.anchor and (best is None
                                                               or entry.seq > best.seq):
            best = entry
    return best
