"""The backup file: a gzipped tar whose first member, ``manifest.json``, lists every other
member with its SHA-256, size and mode.

Only the names this format defines may appear (``database/...``, ``secrets/<known>``,
``audit/<known>``, ``models/<name>.json``, ``models/signatures/<name>.sig``): reading
refuses anything else, any link or device, any member the manifest does not list or lists
with another hash, before a byte is put in place. The file is written under a temporary
name beside its destination, fsynced and renamed: it is whole, or not there.
"""

from __future__ import annotations

import hashlib
import io
import os
import re
import tarfile
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import orjson

from autoglm.errors import ConfigError

FORMAT = "autoglm-backup/1"
MANIFEST = "manifest.json"
DB_MEMBERS = ("database/autoglm.db", "database/autoglm.pgdump")
# secrets and audit files by their place under data_dir, as AuditPaths and auth name them
AUDIT_SECRETS = ("secrets/audit_hmac_key", "secrets/audit_signing_key.pem")
OPTIONAL_SECRETS = ("secrets/pepper", "secrets/personal_data_key")
AUDIT_FILES = ("audit/checkpoints.jsonl", "audit/checkpoint_key.pub.pem")
_MODEL = re.compile(r"^models/(?:signatures/)?[A-Za-z0-9][A-Za-z0-9._-]{0,127}\.(?:json|sig)$")
_CHUNK = 1 << 20


def allowed(name: str) -> bool:
    """A member name this format defines (so extracting it cannot escape data_dir)."""
    if name in DB_MEMBERS or name in AUDIT_SECRETS or name in OPTIONAL_SECRETS:
        return True
    if name in AUDIT_FILES:
        return True
    return bool(_MODEL.match(name)) and (name.endswith(".json") != ("/signatures/" in name))


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(_CHUNK), b""):
            h.update(chunk)
    return h.hexdigest()


@dataclass(frozen=True)
class Member:
    name: str  # inside the archive, also its place under data_dir (but the database)
    source: Path  # the staged file
    mode: int


def write(out: Path, manifest: dict[str, Any], members: list[Member]) -> str:
    """Write the archive atomically (mode 0600); its SHA-256."""
    listed = []
    for m in members:
        if not allowed(m.name):
            raise ConfigError(f"internal: {m.name} is not a backup member name")
        listed.append({"path": m.name, "sha256": sha256_file(m.source),
                       "bytes": m.source.stat().st_size, "mode": f"{m.mode:04o}"})
    doc = {**manifest, "format": FORMAT, "members": listed}
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        with os.fdopen(fd, "wb") as raw:
            with tarfile.open(fileobj=raw, mode="w:gz") as tar:
                _add_bytes(tar, MANIFEST, orjson.dumps(doc, option=orjson.OPT_INDENT_2), 0o644)
                for m in members:
                    info = tarfile.TarInfo(m.name)
                    info.size = m.source.stat().st_size
                    info.mode = m.mode
                    with m.source.open("rb") as fh:
                        tar.addfile(info, fh)
            raw.flush()
            os.fsync(raw.fileno())
        os.replace(tmp, out)
    finally:
        tmp.unlink(missing_ok=True)
    _fsync_dir(out.parent)
    return sha256_file(out)


def _add_bytes(tar: tarfile.TarFile, name: str, data: bytes, mode: int) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    info.mode = mode
    tar.addfile(info, io.BytesIO(data))


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def read_manifest(path: Path) -> dict[str, Any]:
    """The manifest of a backup file, checked for form (not yet the members)."""
    with _open(path) as tar:
        first = tar.next()
        if first is None or first.name != MANIFEST or not first.isfile():
            raise ConfigError(f"{path} is not an autoglm backup (no {MANIFEST} first)")
        fh = tar.extractfile(first)
        doc = _parse_manifest(path, fh.read() if fh else b"")
    return doc


def _parse_manifest(path: Path, raw: bytes) -> dict[str, Any]:
    try:
        doc = orjson.loads(raw)
    except orjson.JSONDecodeError:
        raise ConfigError(f"{path}: its {MANIFEST} is not JSON") from None
    if not isinstance(doc, dict) or doc.get("format") != FORMAT:
        raise ConfigError(f"{path}: not a {FORMAT} backup (format {doc.get('format')!r})"
                          if isinstance(doc, dict) else f"{path}: a damaged manifest")
    members = doc.get("members")
    if not isinstance(members, list) or not all(
            isinstance(m, dict) and allowed(str(m.get("path"))) for m in members):
        raise ConfigError(f"{path}: its manifest lists a member this format does not define")
    return doc


def extract(path: Path, into: Path) -> dict[str, Any]:
    """Every member into ``into`` (created, 0700), each checked against the manifest;
    ConfigError naming the first that is missing, extra, damaged or not a plain file."""
    into.mkdir(mode=0o700, parents=True, exist_ok=False)
    try:
        return _extract(path, into)
    except (tarfile.TarError, EOFError, zlib.error) as exc:
        raise ConfigError(f"{path} is damaged or cut short: {exc}") from None


def _extract(path: Path, into: Path) -> dict[str, Any]:
    with _open(path) as tar:
        first = tar.next()
        if first is None or first.name != MANIFEST or not first.isfile():
            raise ConfigError(f"{path} is not an autoglm backup (no {MANIFEST} first)")
        fh = tar.extractfile(first)
        doc = _parse_manifest(path, fh.read() if fh else b"")
        want = {m["path"]: m for m in doc["members"]}
        seen: set[str] = set()
        for info in _rest(tar):
            entry = want.get(info.name)
            if entry is None or info.name in seen:
                raise ConfigError(f"{path}: member {info.name!r} is not in its manifest")
            if not info.isfile():
                raise ConfigError(f"{path}: member {info.name} is not a plain file")
            seen.add(info.name)
            target = into / info.name
            target.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
            digest = _copy(tar.extractfile(info), target)
            if digest != entry["sha256"] or target.stat().st_size != entry["bytes"]:
                raise ConfigError(f"{path}: member {info.name} does not match the SHA-256 of "
                                  "its manifest (the backup is damaged)")
        missing = sorted(set(want) - seen)
        if missing:
            raise ConfigError(f"{path}: member(s) {', '.join(missing)} of its manifest are "
                              "missing (the backup is cut short)")
    return doc


def _rest(tar: tarfile.TarFile) -> Iterator[tarfile.TarInfo]:
    while (info := tar.next()) is not None:
        yield info


def _copy(src: IO[bytes] | None, target: Path) -> str:
    h = hashlib.sha256()
    fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as out:
        while src is not None and (chunk := src.read(_CHUNK)):
            h.update(chunk)
            out.write(chunk)
    return h.hexdigest()


def _open(path: Path) -> tarfile.TarFile:
    try:
        return tarfile.open(path, mode="r:gz")
    except FileNotFoundError:
        raise ConfigError(f"backup file not found: {path}") from None
    except (tarfile.TarError, OSError, EOFError) as exc:
        raise ConfigError(f"{path} is not a readable backup file: {exc}") from None
