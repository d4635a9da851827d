"""The models this platform knows: ``data_dir/models/<name>.json`` per model.

An entry records where the model's files are, where they came from, its manifest (the
SHA-256 and size of every file) and what was found at the last verification. Entries are
written atomically, so a crash never leaves one half-written.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any

from autoglm.errors import ConfigError, NotFoundError
from autoglm.supply import manifest as mf
from autoglm.timefmt import stamp

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")


def _describe_format(root: Path) -> tuple[str, str | None]:
    files = mf.model_files(root)
    ggufs = [f for f in files if f.suffix == ".gguf"]
    if ggufs:
        m = re.search(r"\.(Q\d[\w]*|F16|F32|BF16|IQ\d\w*)\.gguf$", ggufs[0].name, re.IGNORECASE)
        return "gguf", (m.group(1).upper() if m else None)
    if any(f.suffix == ".safetensors" for f in files):
        return "safetensors", None
    return "other", None


class Registry:
    def __init__(self, data_dir: Path) -> None:
        self.dir = data_dir / "models"

    def _entry_path(self, name: str) -> Path:
        self.check_name(name)
        return self.dir / f"{name}.json"

    @staticmethod
    def check_name(name: str) -> None:
        if not _NAME.match(name):
            raise ConfigError(f"invalid model name '{name}': use letters, digits, . _ -")

    def ensure_free(self, name: str) -> None:
        """A valid name that no registered model uses yet; ConfigError otherwise."""
        if self._entry_path(name).exists():
            raise ConfigError(f"a model named '{name}' is already registered")

    def _write(self, name: str, entry: dict[str, Any]) -> None:
        path = self._entry_path(name)
        self.dir.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        tmp.write_text(json.dumps(entry, indent=2))
        os.replace(tmp, path)

    def save(self, entry: dict[str, Any]) -> None:
        self._write(entry["name"], entry)

    def get(self, name: str) -> dict[str, Any]:
        try:
            return json.loads(self._entry_path(name).read_text())
        except FileNotFoundError:
            raise NotFoundError(f"no model named '{name}' (see `autoglm model list`)") from None

    def list(self) -> list[dict[str, Any]]:
        if not self.dir.is_dir():
            return []
        return [json.loads(p.read_text()) for p in sorted(self.dir.glob("*.json"))]

    def add(self, path: Path, name: str | None = None, *, source: str = "local",
            revision: str | None = None, progress: mf.Progress | None = None) -> dict[str, Any]:
        root = path.expanduser().resolve()
        if not root.exists():
            raise ConfigError(f"model path not found: {root}")
        name = name or root.name.removesuffix(".gguf")
        self.ensure_free(name)
        manifest = mf.build(root, source=source, revision=revision, progress=progress)
        if not manifest["files"]:
            raise ConfigError(f"{root} holds no files")
        return self.register(name, root, manifest, source=source, revision=revision)

    def register(self, name: str, root: Path, manifest: dict[str, Any], *, source: str,
                 revision: str | None) -> dict[str, Any]:
        """Record a model whose manifest was just built from its checked bytes."""
        fmt, quant = _describe_format(root)
        entry = {"name": name, "path": str(root), "source": source, "revision": revision,
                 "format": fmt, "quantization": quant, "manifest": manifest,
                 "verified": {"intact": True, "at": manifest["created_at"], "full": True},
                 "signed_by": None}
        self._write(name, entry)
        return entry

    def verify(self, name: str, *, full: bool = True,
               progress: mf.Progress | None = None) -> mf.Verification:
        entry = self.get(name)
        result = mf.verify(Path(entry["path"]), entry["manifest"], full=full, progress=progress)
        entry["verified"] = {"intact": result.intact, "at": stamp(),
                             "full": full}
        self._write(name, entry)
        return result

    def remove(self, name: str) -> dict[str, Any]:
        entry = self.get(name)
        self._entry_path(name).unlink()
        return entry
