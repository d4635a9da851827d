"""Model signatures with OpenSSF model-signing, key-based (no network needed).

``sign`` signs the model's files with an elliptic-curve private key (PEM); the signature
(a signed statement of every file's digest, i.e. the model's manifest) is kept at
``data_dir/models/signatures/<name>.sig``. ``verify`` re-hashes the files and checks
the signature with a public key. At load, ``signed_digests`` checks the signature
against every key in ``trusted_keys`` and hands back the per-file digests it vouches
for; the trust check compares them with the hashes of the bytes actually loaded.
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


def signed_digests(sig: Path, trusted_keys: list[Path]) -> tuple[str, dict[str, str]] | None:
    """The load-time check: the signature verified cryptographically with one of the
    trusted public keys; the signer's fingerprint and the SHA-256 it vouches for, per file
    (``"."`` for a one-file model). No file is re-hashed here: the caller compares these
    digests with the ones it computed from the bytes it loads. None when no trusted key
    verifies the signature."""
    from model_signing._signing import sign_ec_key, sign_sigstore_pb

    if not sig.is_file():
        return None
    try:
        signature = sign_sigstore_pb.Signature.read(sig)
    except Exception:  # noqa: BLE001 - a damaged file is simply not a valid signature
        return None
    for key in trusted_keys:
        try:
            manifest = sign_ec_key.Verifier(key).verify(signature)
        except Exception:  # noqa: BLE001 - not this key (or not a valid signature)
            continue
        digests = {}
        for rd in manifest.resource_descriptors():
            if rd.digest.algorithm != "sha256":
                return None
            digests[str(rd.identifier)] = rd.digest.digest_value.hex()
        return fingerprint_public(key.read_bytes()), digests
    return None
