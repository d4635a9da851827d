"""The one translation from exceptions to HTTP: OpenAI-shaped JSON, never a stack trace."""

from __future__ import annotations

import logging
import math

import orjson
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response

from autoglm.errors import (
    AutoGLMError,
    InvalidRequestError,
    MethodNotAllowedError,
    NotFoundError,
    PayloadTooLargeError,
)

log = logging.getLogger("autoglm.api")

INTERNAL = "The server had an error while processing your request. Retry, and quote the request id if it persists."


def error_body(exc: AutoGLMError) -> bytes:
    return orjson.dumps(exc.to_dict())


def error_headers(exc: AutoGLMError) -> dict[str, str]:
    headers = {"content-type": "application/json"}
    if exc.retry_after is not None:
        headers["retry-after"] = str(max(1, math.ceil(exc.retry_after)))
    return headers


def error_response(exc: AutoGLMError) -> Response:
    return Response(error_body(exc), status_code=exc.status, headers=error_headers(exc))


def internal_error() -> AutoGLMError:
    return AutoGLMError(INTERNAL, code="internal_error")


def from_http_exception(exc: HTTPException) -> AutoGLMError:
    if exc.status_code == 404:
        return NotFoundError("Unknown route. See /v1/models, /v1/chat/completions, /v1/completions.")
    if exc.status_code == 405:
        allow = (exc.headers or {}).get("Allow") or (exc.headers or {}).get("allow")
        return MethodNotAllowedError(
            f"Method not allowed for this route{f'; allowed: {allow}' if allow else ''}."
        )
    if exc.status_code == 413:
        return PayloadTooLargeError(str(exc.detail))
    if 400 <= exc.status_code < 500:
        err = InvalidRequestError(str(exc.detail))
        err.status = exc.status_code
        return err
    return internal_error()


async def http_exception_handler(request: Request, exc: Exception) -> Response:
    if not isinstance(exc, HTTPException):
        return error_response(internal_error())
    response = error_response(from_http_exception(exc))
    if exc.status_code == 405 and exc.headers:
        for k, v in exc.headers.items():
            response.headers[k] = v
    return response


async def autoglm_error_handler(request: Request, exc: Exception) -> Response:
    if not isinstance(exc, AutoGLMError):
        return error_response(internal_error())
    return error_response(exc)
