"""Engines: the processes that hold models and generate text."""

from __future__ import annotations

from typing import Any

from autoglm import errors


def errors_from_wire(msg: dict[str, Any]) -> errors.AutoGLMError:
    """Rebuild an error event from an engine as the platform's own exception."""
    kind = getattr(errors, str(msg.get("kind", "")), None)
    cls = kind if isinstance(kind, type) and issubclass(kind, errors.AutoGLMError) else None
    if cls is None:
        cls = errors.InvalidRequestError if msg.get("status") == 400 else errors.EngineError
    exc = cls(str(msg.get("message", "engine error")), param=msg.get("param"))
    if msg.get("code"):
        exc.code = str(msg["code"])
    return exc
