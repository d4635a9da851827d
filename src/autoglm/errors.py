"""One error hierarchy for the whole platform.

Everything the platform refuses or fails at is raised as an ``AutoGLMError``; the HTTP
edge turns it into the OpenAI error shape (``api/errors.py``) and the CLI edge into a
one-line message and exit status (``cli/main.py``). Messages are safe to show a client:
they never carry stack traces, secrets, or internal addresses.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any


class AutoGLMError(Exception):
    """Base of every error the platform raises on purpose."""

    status: int = 500
    type: str = "server_error"
    code: str | None = None

    def __init__(
        self,
        message: str,
        *,
        param: str | None = None,
        code: str | None = None,
        retry_after: float | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.param = param
        if code is not None:
            self.code = code
        self.retry_after = retry_after

    def to_dict(self) -> dict[str, Any]:
        """The OpenAI error body."""
        return {
            "error": {
                "message": self.message,
                "type": self.type,
                "param": self.param,
                "code": self.code,
            }
        }

    def to_wire(self) -> dict[str, Any]:
        """The one shape an error travels in between processes (engine -> gateway)."""
        return {"status": self.status, "code": self.code, "message": self.message,
                "param": self.param, "kind": type(self).__name__,
                "retry_after": self.retry_after}


def error_from_wire(msg: dict[str, Any]) -> AutoGLMError:
    """Rebuild an error from ``to_wire`` (or any dict with status/code/message)."""
    cls = _BY_NAME.get(str(msg.get("kind", "")))
    if cls is None:
        cls = error_class_for(_as_int(msg.get("status")))
    param = msg.get("param")
    retry = msg.get("retry_after")
    exc = cls(str(msg.get("message") or "engine error"),
              param=param if isinstance(param, str) else None,
              retry_after=float(retry) if isinstance(retry, (int, float)) else None)
    code = msg.get("code")
    if isinstance(code, str) and code:
        exc.code = code
    status = _as_int(msg.get("status"))
    if status is not None and 400 <= status < 600 and status != exc.status:
        exc.status = status
    return exc


def error_from_openai_body(status: int, body: bytes | dict[str, Any] | None,
                           default: str) -> AutoGLMError:
    """An OpenAI-shaped error body from another server (an upstream), kept at its status.

    Only the message, param and code are taken; the message is the server's own text.
    """
    import orjson

    message, param, code = default, None, None
    try:
        data = orjson.loads(body) if isinstance(body, (bytes, bytearray)) else body
        err = data.get("error") if isinstance(data, dict) else None
        if isinstance(err, dict):
            message = str(err.get("message") or default)
            param, code = err.get("param"), err.get("code")
        elif isinstance(err, str):
            message = err
    except orjson.JSONDecodeError:
        pass
    return error_from_wire({"status": status, "message": message, "param": param,
                            "code": code if isinstance(code, str) else None})


def error_class_for(status: int | None) -> type[AutoGLMError]:
    """The hierarchy's class for an HTTP status (unknown 4xx: invalid request)."""
    if status is None:
        return EngineError
    cls = _BY_STATUS.get(status)
    if cls is not None:
        return cls
    if 400 <= status < 500:
        return InvalidRequestError
    return EngineError


def _as_int(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


class ConfigError(AutoGLMError):
    """Settings that cannot be used."""

    code = "invalid_config"


class InvalidRequestError(AutoGLMError):
    status = 400
    type = "invalid_request_error"


class PiiBlockedError(InvalidRequestError):
    """A text held personal data of a category the policy blocks."""

    code = "pii_blocked"

    def __init__(self, categories: Sequence[str]) -> None:
        self.categories = tuple(categories)
        super().__init__(f"the text contains personal data this deployment does not accept "
                         f"({', '.join(self.categories)}); remove it and send the request again")


class ContextLengthError(InvalidRequestError):
    code = "context_length_exceeded"


class UnsupportedParameterError(InvalidRequestError):
    code = "unsupported_parameter"


class AuthenticationError(AutoGLMError):
    status = 401
    type = "invalid_request_error"
    code = "invalid_api_key"


class PermissionDeniedError(AutoGLMError):
    status = 403
    type = "invalid_request_error"
    code = "permission_denied"


class NotFoundError(AutoGLMError):
    status = 404
    type = "invalid_request_error"
    code = "not_found"


class ModelNotFoundError(NotFoundError):
    code = "model_not_found"


class RepoNotFoundError(NotFoundError):
    """A repository the internal mirror does not publish (or not to this caller). ``hub_code``
    is Hugging Face's name for the error, sent as ``X-Error-Code`` so hub clients raise
    their own matching exception."""

    code = "repo_not_found"
    hub_code = "RepoNotFound"


class RevisionNotFoundError(RepoNotFoundError):
    code = "revision_not_found"
    hub_code = "RevisionNotFound"


class EntryNotFoundError(RepoNotFoundError):
    code = "entry_not_found"
    hub_code = "EntryNotFound"


class MethodNotAllowedError(AutoGLMError):
    status = 405
    type = "invalid_request_error"
    code = "method_not_allowed"


class LockBusyError(AutoGLMError):
    """A single-flight operation (a pull, a key rotation) is under way elsewhere."""

    status = 409
    type = "invalid_request_error"
    code = "operation_in_progress"


class ChainConflictError(AutoGLMError):
    """A record an edge node forwarded does not continue that node's chain at the centre."""

    status = 409
    type = "invalid_request_error"
    code = "edge_chain_conflict"


class CentreManagedError(AutoGLMError):
    """On an edge node: tenants, projects, principals, keys and limits are the centre's."""

    status = 409
    type = "invalid_request_error"
    code = "managed_by_centre"


class PayloadTooLargeError(AutoGLMError):
    status = 413
    type = "invalid_request_error"
    code = "request_too_large"
    body_read = False  # the whole body had arrived when the limit was passed


class FileTooLargeError(AutoGLMError):
    """An upload over its own limit (``batch_file_max_bytes``), found once the body was
    read: not a ``PayloadTooLargeError``, whose answer first drains an unread body."""

    status = 413
    type = "invalid_request_error"
    code = "file_too_large"


class RateLimitError(AutoGLMError):
    status = 429
    type = "rate_limit_error"
    code = "rate_limit_exceeded"
    headers: tuple[tuple[bytes, bytes], ...] = ()  # x-ratelimit-* where the limits stand


class QuotaExceededError(RateLimitError):
    """A tenant's daily token quota is used up (429, as OpenAI answers an exhausted quota)."""

    type = "insufficient_quota"
    code = "insufficient_quota"


class ServiceUnavailableError(AutoGLMError):
    status = 503
    type = "server_error"
    code = "service_unavailable"


class OverloadedError(ServiceUnavailableError):
    code = "server_overloaded"


class EdgeStaleError(ServiceUnavailableError):
    """An edge node has not reached its centre for longer than it may serve on its copy."""

    code = "edge_stale"


class EngineUnavailableError(ServiceUnavailableError):
    code = "engine_unavailable"


class EngineError(AutoGLMError):
    """The engine failed while generating; the message is safe to show."""

    status = 500
    code = "engine_error"


class UpstreamError(AutoGLMError):
    """An upstream instance could not be reached or failed; never names its address."""

    status = 502
    type = "server_error"
    code = "upstream_error"


class UpstreamTimeoutError(AutoGLMError):
    status = 504
    type = "server_error"
    code = "upstream_timeout"


class IntegrityError(AutoGLMError):
    """Bytes that differ from the hash they must have (a download, a model, a bundle)."""

    code = "integrity_mismatch"


class StorageFullError(AutoGLMError):
    """Not enough disk space for what was asked."""

    status = 507
    code = "insufficient_storage"


class AuditError(AutoGLMError):
    """An audit record that cannot be stored, or an audit log that cannot take records
    (the database is unreachable for too long, or the log is closed)."""

    code = "audit_error"


class HubError(AutoGLMError):
    """A model hub or mirror could not be reached, or answered something unusable."""

    status = 502
    code = "hub_error"


def _subclasses(cls: type[AutoGLMError]) -> list[type[AutoGLMError]]:
    out = [cls]
    for sub in cls.__subclasses__():
        out.extend(_subclasses(sub))
    return out


_BY_NAME: dict[str, type[AutoGLMError]] = {c.__name__: c for c in _subclasses(AutoGLMError)}
_BY_STATUS: dict[int, type[AutoGLMError]] = {
    400: InvalidRequestError, 401: AuthenticationError, 403: PermissionDeniedError,
    404: NotFoundError, 405: MethodNotAllowedError, 413: PayloadTooLargeError,
    429: RateLimitError, 500: EngineError, 502: UpstreamError, 503: ServiceUnavailableError,
    504: UpstreamTimeoutError, 507: StorageFullError,
}
