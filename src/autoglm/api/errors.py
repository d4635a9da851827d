"""The one translation from exceptions to HTTP: OpenAI-shaped JSON, never a stack trace.

The edge middleware catches everything a request raises and calls ``to_error``; routing
errors (unknown path, wrong method) are raised to it too (``raise_routing_error``), so
every error response of the server is made by ``error_headers``/``error_body`` here.
"""

from __future__ import annotations

import logging
import math

import orjson
from starlette.exceptions import HTTPException
from starlette.requests import Request

from autoglm.errors import (
    AutoGLMError,
    InvalidRequestError,
    MethodNotAllowedError,
    NotFoundError,
    PayloadTooLargeError,
)

log = logging.getLogger("autoglm.api")

INTERNAL = ("The server had an error while processing your request. Retry, and quote the "
            "request id if it persists.")


def error_body(exc: AutoGLMError) -> bytes:
    return orjson.dumps(exc.to_dict())


def error_headers(exc: AutoGLMError) -> list[tuple[bytes, bytes]]:
    headers = [(b"content-type", b"application/json")]
    if exc.retry_after is not None:
        headers.append((b"retry-after", str(max(1, math.ceil(exc.retry_after))).encode()))
    allow = getattr(exc, "allow", None)
    if allow:
        headers.append((b"allow", allow.encode("latin-1")))
    hub_code = getattr(exc, "hub_code", None)  # the mirror's errors, as Hugging Face names them
    if hub_code:
        headers.append((b"x-error-code", hub_code.encode("latin-1")))
    return headers


def internal_error() -> AutoGLMError:
    return AutoGLMError(INTERNAL, code="internal_error")


def to_error(exc: BaseException) -> AutoGLMError:
    """What the client is told about ``exc``. Anything unexpected is logged with its trace
    (call this inside the ``except`` block) and becomes a plain 500."""
    if isinstance(exc, AutoGLMError):
        return exc
    if isinstance(exc, HTTPException):
        return _from_http_exception(exc)
    log.error("unhandled error while serving request", exc_info=exc)
    return internal_error()


def _from_http_exception(exc: HTTPException) -> AutoGLMError:
    if exc.status_code == 404:
        return NotFoundError(
            "Unknown route. See /v1/models, /v1/chat/completions, /v1/completions.")
    if exc.status_code == 405:
        allow = (exc.headers or {}).get("Allow") or (exc.headers or {}).get("allow")
        err = MethodNotAllowedError(
            f"Method not allowed for this route{f'; allowed: {allow}' if allow else ''}.")
        err.allow = allow  # type: ignore[attr-defined]
        return err
    if exc.status_code == 413:
        return PayloadTooLargeError(str(exc.detail))
    if 400 <= exc.status_code < 500:
        err = InvalidRequestError(str(exc.detail))
        err.status = exc.status_code
        return err
    return internal_error()


async def raise_routing_error(request: Request, exc: Exception) -> None:
    """Starlette's handler for its routing errors: hand them to the edge middleware."""
    raise exc
