"""Model signatures with OpenSSF model-signing, key-based (no network needed).

``sign`` signs the model's files with an elliptic-curve private key (PEM); the signature
(a signed statement of every file's digest, i.e. the model's manifest) is kept at
``data_dir/models/signatures/<name>.sig``. ``verify`` re-hashes the files and checks
the signature with a public key. The registry records the signer's key fingerprint and
the signature file's hash, which is what the load-time trust check looks at (fast); the
full cryptographic check is ``autoglm model verify NAME --pubkey KEY``.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives import serialization

from autoglm.errors import ConfigError
from autoglm.supply.registry import Registry


def fingerprint_public(pem: bytes) -> str:
    try:
        key = serialization.load_pem_public_key(pem)
    except ValueError as exc:
        raise ConfigError(f"not a PEM public key: {exc}") from None
    der = key.public_bytes(serialization.Encoding.DER,
                           serialization.PublicFormat.SubjectPublicKeyInfo)
    return "sha256:" + hashlib.sha256(der).hexdigest()


def fingerprint_private(pem: bytes) -> str:
    try:
        key = serialization.load_pem_private_key(pem, password=None)
    except (ValueError, TypeError) as exc:
        raise ConfigError(f"not an unencrypted PEM private key: {exc}") from None
    pub = key.public_key().public_bytes(serialization.Encoding.PEM,
                                        serialization.PublicFormat.SubjectPublicKeyInfo)
    return fingerprint_public(pub)


def signature_path(registry: Registry, name: str) -> Path:
    return registry.dir / "signatures" / f"{name}.sig"


def sign(registry: Registry, name: str, private_key: Path) -> dict[str, Any]:
    import model_signing

    entry = registry.get(name)
    if not private_key.is_file():
        raise ConfigError(f"private key not found: {private_key}")
    signer = fingerprint_private(private_key.read_bytes())
    sig = signature_path(registry, name)
    sig.parent.mkdir(parents=True, exist_ok=True)
    tmp = sig.with_name(sig.name + ".tmp")
    try:
        model_signing.signing.Config().use_elliptic_key_signer(
            private_key=private_key).sign(entry["path"], tmp)
    except Exception as exc:  # noqa: BLE001 - the library raises many kinds; one clear line
        tmp.unlink(missing_ok=True)
        raise ConfigError(f"signing '{name}' failed: {exc}") from None
    tmp.replace(sig)
    entry["signed_by"] = signer
    entry["signature_sha256"] = hashlib.sha256(sig.read_bytes()).hexdigest()
    registry.save(entry)
    return entry


def verify(registry: Registry, name: str, public_key: Path) -> str:
    """Full check: re-hash the files and verify the signature. Returns the signer."""
    entry = registry.get(name)
    sig = signature_path(registry, name)
    if not sig.is_file():
        raise ConfigError(f"model '{name}' has no signature (`autoglm model sign {name}`)")
    return verify_files(Path(entry["path"]), sig, public_key, name)


def verify_files(model: Path, sig: Path, public_key: Path, name: str) -> str:
    """Re-hash a model's files and check its signature with a key; the signer."""
    import model_signing

    if not public_key.is_file():
        raise ConfigError(f"public key not found: {public_key}")
    try:
        model_signing.verifying.Config().use_elliptic_key_verifier(
            public_key=public_key).verify(model, sig)
    except Exception as exc:  # noqa: BLE001 - the library raises many kinds; one clear line
        raise ConfigError(f"signature of '{name}' does not verify: {exc}") from None
    return fingerprint_public(public_key.read_bytes())


def trusted_signer(registry: Registry, entry: dict[str, Any], trusted: set[str]) -> str | None:
    """The load-time check: signed by a trusted key, and the signature file unchanged."""
    signer = entry.get("signed_by")
    if not signer or signer not in trusted:
        return None
    sig = signature_path(registry, entry["name"])
    if not sig.is_file() or hashlib.sha256(sig.read_bytes()).hexdigest() != entry.get(
            "signature_sha256"):
        return None
    return signer
