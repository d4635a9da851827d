"""One error hierarchy for the whole platform.

Everything the platform refuses or fails at is raised as an ``AutoGLMError``; the HTTP
edge turns it into the OpenAI error shape (``api/errors.py``) and the CLI edge into a
one-line message and exit status (``cli/main.py``). Messages are safe to show a client:
they never carry stack traces, secrets, or internal addresses.
"""

from __future__ import annotations

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
        return {
            "error": {
                "message": self.message,
                "type": self.type,
                "param": self.param,
                "code": self.code,
            }
        }


class ConfigError(AutoGLMError):
    """Settings that cannot be used."""

    code = "invalid_config"


class InvalidRequestError(AutoGLMError):
    status = 400
    type = "invalid_request_error"


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


class MethodNotAllowedError(AutoGLMError):
    status = 405
    type = "invalid_request_error"
    code = "method_not_allowed"


class PayloadTooLargeError(AutoGLMError):
    status = 413
    type = "invalid_request_error"
    code = "request_too_large"


class RateLimitError(AutoGLMError):
    status = 429
    type = "rate_limit_error"
    code = "rate_limit_exceeded"


class ServiceUnavailableError(AutoGLMError):
    status = 503
    type = "server_error"
    code = "service_unavailable"


class OverloadedError(ServiceUnavailableError):
    code = "server_overloaded"


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


class HubError(AutoGLMError):
    """A model hub or mirror could not be reached, or answered something unusable."""

    status = 502
    code = "hub_error"
