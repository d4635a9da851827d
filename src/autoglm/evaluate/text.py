"""The text perplexity is measured on, and where it came from.

The default is the Python Language Reference as the running interpreter ships it
(``pydoc_data.topics``, the text ``help('assert')`` shows): read at run time, never
copied into this repository. ``--text FILE`` measures on the user's own text instead.
"""

from __future__ import annotations

import hashlib
import platform
from dataclasses import dataclass
from pathlib import Path

from autoglm.errors import ConfigError

# The reference's topics are taken in this (sorted) order until this many characters:
# far more than the default windows need, so the tokens scored do not depend on it.
MAX_REFERENCE_CHARS = 200_000


@dataclass(frozen=True)
class EvalText:
    text: str
    source: str  # what a reader is told the text is

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.text.encode("utf-8")).hexdigest()

    def describe(self) -> dict[str, object]:
        return {"source": self.source, "chars": len(self.text), "sha256": self.sha256}


def reference_text(max_chars: int = MAX_REFERENCE_CHARS) -> EvalText:
    """The Python Language Reference topics of this interpreter, in sorted topic order."""
    try:
        from pydoc_data.topics import topics
    except ImportError:
        raise ConfigError("this Python has no pydoc_data (the Language Reference text the "
                          "default evaluation uses); pass --text FILE") from None
    parts: list[str] = []
    size = 0
    for key in sorted(topics):
        if size >= max_chars:
            break
        parts.append(topics[key].strip())
        size += len(parts[-1]) + 2
    text = "\n\n".join(parts)[:max_chars]
    return EvalText(text, f"Python {platform.python_version()} Language Reference topics "
                          "(pydoc_data.topics, shipped with the interpreter)")


def file_text(path: Path) -> EvalText:
    """The user's own text (UTF-8)."""
    try:
        text = path.expanduser().read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"text file not found: {path}") from None
    except UnicodeDecodeError:
        raise ConfigError(f"text file {path} is not UTF-8") from None
    except OSError as exc:
        raise ConfigError(f"cannot read text file {path}: {exc.strerror}") from None
    if not text.strip():
        raise ConfigError(f"text file {path} is empty")
    return EvalText(text, f"file {path.name}")
