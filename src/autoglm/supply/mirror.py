"""The internal mirror's view of the registry, and what a pull from it keeps besides the files.

Publishing (``autoglm serve --mirror``, ``api/mirror.py``): every registered model whose last
verification found it intact (``verified.intact``) and whose files are still exactly those of
its manifest, at their sizes, is a repository ``autoglm/<name>`` with one revision, ``main``.
Its commit id is the first 40 hex digits of the SHA-256 of the published manifest, so any
change to the model's files or signature gives a new commit. Each file's size and SHA-256 are
the manifest's; two more files are published beside the model's:

- ``autoglm-manifest.json``: the registry's manifest (every file's path, size, SHA-256), the
  model's layout (one ``file`` or a ``directory``) and who signed it;
- ``autoglm-manifest.sig``: the model's signature (``autoglm model sign``), when it has one.

Pulling (``supply/pull.py``): those two names are never model files (``manifest.IGNORED``).
``take_published`` lifts them out of a finished download, checks that the manifest agrees
with the hashes the files were checked against, keeps the signature as the model's own
(``signatures/<name>.sig``, checked at load against ``trusted_keys``) and registers a one-file
model as that file, so a signature over one file verifies on the pulling node too.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from autoglm.errors import AutoGLMError, IntegrityError
from autoglm.supply import manifest as mf
from autoglm.supply.registry import Registry
from autoglm.supply.signing import signature_path

ORG = "autoglm"  # repositories are autoglm/<registry name>
REVISION = "main"
MANIFEST_FILE = "autoglm-manifest.json"
SIGNATURE_FILE = "autoglm-manifest.sig"
PUBLISHED = (MANIFEST_FILE, SIGNATURE_FILE)


@dataclass(frozen=True)
class MirrorFile:
    path: str  # in the repository
    size: int
    sha256: str
    source: Path | None = None  # on disk (model files, the signature)
    data: bytes | None = None  # made here (the published manifest)


@dataclass
class MirrorModel:
    name: str
    commit: str
    files: list[MirrorFile] = field(default_factory=list)

    @property
    def repo(self) -> str:
        return f"{ORG}/{self.name}"

    def file(self, path: str) -> MirrorFile | None:
        return next((f for f in self.files if f.path == path), None)


def _published_manifest(entry: dict[str, Any], root: Path, sig: Path | None) -> bytes:
    doc = {"name": entry["name"], "layout": "file" if root.is_file() else "directory",
           "format": entry.get("format"), "quantization": entry.get("quantization"),
           "source": entry.get("source"), "revision": entry.get("revision"),
           "signed_by": entry.get("signed_by") if sig is not None else None,
           "signature_sha256": (hashlib.sha256(sig.read_bytes()).hexdigest()
                                if sig is not None else None),
           "manifest": entry["manifest"]}
    return json.dumps(doc, indent=2, sort_keys=True).encode()


class Catalog:
    """The registry's verified models, as the mirror publishes them. Read afresh on every
    call (a model verified, signed or removed is seen at once): an entry and a ``stat`` of
    each of its files, no hashing."""

    def __init__(self, data_dir: Path) -> None:
        self.registry = Registry(data_dir)

    def names(self) -> list[str]:
        return [e["name"] for e in self.registry.list() if self._publishable(e) is not None]

    def get(self, name: str) -> MirrorModel | None:
        try:
            entry = self.registry.get(name)
        except (AutoGLMError, ValueError, OSError):  # an invalid or unknown name
            return None
        root = self._publishable(entry)
        if root is None:
            return None
        files = [MirrorFile(f["path"], f["size"], f["sha256"],
                            root if root.is_file() else root / f["path"])
                 for f in entry["manifest"]["files"]]
        sig = signature_path(self.registry, name)
        sig = sig if entry.get("signed_by") and sig.is_file() else None
        doc = _published_manifest(entry, root, sig)
        extras = [MirrorFile(MANIFEST_FILE, len(doc), hashlib.sha256(doc).hexdigest(),
                             data=doc)]
        if sig is not None:
            raw = sig.read_bytes()
            extras.append(MirrorFile(SIGNATURE_FILE, len(raw), hashlib.sha256(raw).hexdigest(),
                                     sig))
        commit = hashlib.sha256(doc).hexdigest()[:40]
        return MirrorModel(name, commit, sorted(files + extras, key=lambda f: f.path))

    @staticmethod
    def _publishable(entry: dict[str, Any]) -> Path | None:
        """The model's root when it is published: verified intact at its last check, and
        its files still exactly the manifest's, at their sizes."""
        if not (entry.get("verified") or {}).get("intact"):
            return None
        root = Path(entry.get("path", ""))
        files = entry.get("manifest", {}).get("files") or []
        if not files or any(f["path"] in PUBLISHED for f in files):
            return None
        try:
            if not mf.verify(root, entry["manifest"], full=False).intact:
                return None
        except OSError:
            return None
        return root


@dataclass
class Published:
    """What a pull from the mirror brought besides the model's files."""

    manifest: dict[str, Any] | None = None
    signature: bytes | None = None


def take_published(staging: Path, done: dict[str, dict[str, Any]]) -> Published:
    """Lift the mirror's manifest and signature out of a finished download (``done``: the
    checked files, by path; the two are removed from it and from ``staging``). The manifest
    must give the same SHA-256 for every file downloaded."""
    out = Published()
    if MANIFEST_FILE in done:
        path = staging / MANIFEST_FILE
        try:
            out.manifest = json.loads(path.read_bytes())
            listed = {f["path"]: f["sha256"] for f in out.manifest["manifest"]["files"]}
        except (ValueError, KeyError, TypeError):
            raise IntegrityError(f"the mirror's {MANIFEST_FILE} is not a model manifest") from None
        for rel, d in done.items():
            if rel not in PUBLISHED and listed.get(rel, d["sha256"]) != d["sha256"]:
                raise IntegrityError(f"{rel}: the mirror's manifest gives another SHA-256 than "
                                     "the listing it was checked against")
    if SIGNATURE_FILE in done:
        out.signature = (staging / SIGNATURE_FILE).read_bytes()
    for rel in PUBLISHED:
        if done.pop(rel, None) is not None:
            (staging / rel).unlink(missing_ok=True)
    return out


def model_root(final: Path, published: Published, done: dict[str, dict[str, Any]]) -> Path:
    """A model the mirror publishes as one file is registered as that file (its signature
    names it so); any other, as its directory."""
    layout = (published.manifest or {}).get("layout")
    if layout == "file" and len(done) == 1:
        only = next(iter(done))
        if "/" not in only and (final / only).is_file():
            return final / only
    return final


def keep_signature(registry: Registry, name: str, published: Published) -> None:
    """The mirror's signature becomes the pulled model's: ``trusted_keys`` decide at load
    whether it counts (``model_trust: signed``), as for a model signed here."""
    if published.signature is None:
        return
    sig = signature_path(registry, name)
    sig.parent.mkdir(parents=True, exist_ok=True)
    tmp = sig.with_name(f".{sig.name}.{os.getpid()}.tmp")
    tmp.write_bytes(published.signature)
    os.replace(tmp, sig)
    entry = registry.get(name)
    entry["signature_sha256"] = hashlib.sha256(published.signature).hexdigest()
    registry.save(entry)
