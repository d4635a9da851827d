"""The audit chain's two secrets and where everything of the audit log lives on disk.

- ``data_dir/secrets/audit_hmac_key``: the chain's HMAC key (32 random bytes, hex);
- ``data_dir/secrets/audit_signing_key.pem``: the Ed25519 key that signs checkpoints;
- ``data_dir/audit/checkpoint_key.pub.pem``: its public half, for whoever verifies;
- ``data_dir/audit/checkpoints.jsonl``: the signed checkpoints;
- ``data_dir/secrets/personal_data_key``: the master key of the personal fields' subject
  keys (``privacy.vault``; 32 random bytes, hex).

Secrets are created on first use with mode 0600, atomically and without ever replacing
one that exists: processes starting together all end up with the same key (the file is
written under a temporary name and hard-linked into place; the loser reads the winner's).
They are never stored in the database. A secret readable by group or others is refused.
Replicas on other hosts sharing one database must be given copies of both files.
"""

from __future__ import annotations

import hashlib
import os
import secrets
import stat
from dataclasses import dataclass
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import (
    Ed25519PrivateKey,
    Ed25519PublicKey,
)

from autoglm.errors import ConfigError


@dataclass(frozen=True)
class AuditPaths:
    hmac_key: Path
    signing_key: Path
    public_key: Path
    checkpoints: Path
    personal_key: Path

    @classmethod
    def under(cls, data_dir: Path) -> AuditPaths:
        return cls(hmac_key=data_dir / "secrets" / "audit_hmac_key",
                   signing_key=data_dir / "secrets" / "audit_signing_key.pem",
                   public_key=data_dir / "audit" / "checkpoint_key.pub.pem",
                   checkpoints=data_dir / "audit" / "checkpoints.jsonl",
                   personal_key=data_dir / "secrets" / "personal_data_key")


def _create_once(path: Path, data: bytes, mode: int) -> None:
    """Write ``path`` unless it exists; never replaces one another process made first."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700 if mode == 0o600 else 0o755)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        try:
            os.link(tmp, path)  # atomic, and fails if the name exists
        except FileExistsError:
            pass
    finally:
        tmp.unlink(missing_ok=True)


def _read_secret(path: Path) -> bytes:
    st = path.stat()
    if st.st_mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise ConfigError(f"{path} can be read by other users (mode "
                          f"{stat.S_IMODE(st.st_mode):o}): run `chmod 600 {path}`")
    return path.read_bytes()


def load_hmac_key(path: Path, *, create: bool) -> bytes:
    """The chain key; created when missing if ``create`` (the writer), else a
    ``ConfigError`` (``verify`` must use the key the records were sealed with)."""
    return _load_key(path, create, "audit key", "the audit chain cannot be checked without "
                     "the key it was sealed with (copy it from the server)")


def load_personal_key(path: Path, *, create: bool) -> bytes:
    """The master key of the personal fields (``privacy.vault``); created when missing if
    ``create``. Losing it makes every sealed personal field unreadable."""
    return _load_key(path, create, "personal data key", "sealed personal fields cannot be "
                     "read without the key they were sealed with (copy it from the server)")


def _load_key(path: Path, create: bool, what: str, missing: str) -> bytes:
    if create and not path.exists():
        _create_once(path, secrets.token_bytes(32).hex().encode(), 0o600)
    try:
        text = _read_secret(path).decode().strip()
    except FileNotFoundError:
        raise ConfigError(f"no {what} at {path}: {missing}") from None
    try:
        key = bytes.fromhex(text)
    except ValueError:
        raise ConfigError(f"{path} does not hold a hex {what}") from None
    if len(key) < 32:
        raise ConfigError(f"{path}: the {what} must be at least 32 bytes")
    return key


def load_signing_key(paths: AuditPaths) -> Ed25519PrivateKey:
    """The checkpoint signing key, created on first use; its public half is kept beside
    the checkpoints."""
    if not paths.signing_key.exists():
        pem = Ed25519PrivateKey.generate().private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption())
        _create_once(paths.signing_key, pem, 0o600)
    key = serialization.load_pem_private_key(_read_secret(paths.signing_key), None)
    if not isinstance(key, Ed25519PrivateKey):
        raise ConfigError(f"{paths.signing_key} is not an Ed25519 private key")
    if not paths.public_key.exists():
        _create_once(paths.public_key, public_pem(key.public_key()), 0o644)
    return key


def load_public_key(path: Path) -> Ed25519PublicKey:
    try:
        key = serialization.load_pem_public_key(path.read_bytes())
    except FileNotFoundError:
        raise ConfigError(f"no checkpoint public key at {path}") from None
    except ValueError as exc:
        raise ConfigError(f"{path} is not a PEM public key: {exc}") from None
    if not isinstance(key, Ed25519PublicKey):
        raise ConfigError(f"{path} is not an Ed25519 public key")
    return key


def public_pem(key: Ed25519PublicKey) -> bytes:
    return key.public_bytes(serialization.Encoding.PEM,
                            serialization.PublicFormat.SubjectPublicKeyInfo)


def fingerprint(key: Ed25519PublicKey) -> str:
    raw = key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return "sha256:" + hashlib.sha256(raw).hexdigest()[:32]
