"""The gateway's outer stages, as one pure-ASGI middleware (cheap on the hot path):

1. request id: taken from a sane ``X-Request-ID`` or made; returned on every response
   and put on every log line through ``request_id_var``;
2. size limit: ``Content-Length`` over the limit is a 413 before reading; a chunked
   body is counted while it is read;
3. authentication for ``/v1`` and ``/admin`` routes; the principal goes to
   ``scope["state"]["principal"]``;
4. errors: an ``AutoGLMError`` becomes its OpenAI-shaped response; anything else is
   logged with its trace and becomes a plain 500; a failure after the response started
   is logged (streams end themselves with an error event);
5. access log and request metrics.
"""

from __future__ import annotations

import logging
import re
import time
import uuid
from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from autoglm.api.errors import error_body, error_headers, internal_error
from autoglm.api.metrics import Metrics, route_label
from autoglm.errors import AutoGLMError, PayloadTooLargeError
from autoglm.logs import request_id_var
from autoglm.security.auth import Authenticator

log = logging.getLogger("autoglm.access")

_SAFE_ID = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")
PROTECTED_PREFIXES = ("/v1/", "/admin/")


def _header(scope: Scope, name: bytes) -> str | None:
    for key, value in scope["headers"]:
        if key == name:
            return value.decode("latin-1")
    return None


class GatewayMiddleware:
    def __init__(
        self, app: ASGIApp, *, auth: Authenticator, metrics: Metrics, max_body_bytes: int
    ) -> None:
        self.app = app
        self.auth = auth
        self.metrics = metrics
        self.max_body = max_body_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        given = _header(scope, b"x-request-id")
        rid = given if given and _SAFE_ID.match(given) else f"req_{uuid.uuid4().hex}"
        token = request_id_var.set(rid)
        state: dict[str, Any] = scope.setdefault("state", {})
        state["request_id"] = rid
        status_box = [0]
        rid_header = (b"x-request-id", rid.encode())

        async def send_wrapper(message: Message) -> None:
            if message["type"] == "http.response.start":
                status_box[0] = message["status"]
                message["headers"] = [*message.get("headers", []), rid_header]
            await send(message)

        try:
            self._check_size(scope)
            if scope["path"].startswith(PROTECTED_PREFIXES):
                state["principal"] = await self.auth.authenticate(
                    _header(scope, b"authorization"))
            await self.app(scope, self._limited(receive), send_wrapper)
        except AutoGLMError as exc:
            await self._fail(send_wrapper, status_box, exc, logged=False)
        except Exception:
            log.exception("unhandled error while serving request")
            await self._fail(send_wrapper, status_box, internal_error(), logged=True)
        finally:
            self._account(scope, state, status_box[0], started)
            request_id_var.reset(token)

    def _check_size(self, scope: Scope) -> None:
        length = _header(scope, b"content-length")
        if length is not None and length.isdigit() and int(length) > self.max_body:
            raise PayloadTooLargeError(
                f"Request body is {int(length)} bytes; the limit is {self.max_body} bytes."
            )

    def _limited(self, receive: Receive) -> Receive:
        seen = [0]
        limit = self.max_body

        async def wrapped() -> Message:
            message = await receive()
            if message["type"] == "http.request":
                seen[0] += len(message.get("body", b""))
                if seen[0] > limit:
                    raise PayloadTooLargeError(
                        f"Request body exceeds the limit of {limit} bytes."
                    )
            return message

        return wrapped

    async def _fail(
        self, send: Send, status_box: list[int], exc: AutoGLMError, logged: bool
    ) -> None:
        if status_box[0]:  # response already started: nothing more can be said to the client
            if not logged:
                log.error("error after response started", extra={"error": exc.message})
            return
        headers = [(k.encode(), v.encode()) for k, v in error_headers(exc).items()]
        await send({"type": "http.response.start", "status": exc.status, "headers": headers})
        await send({"type": "http.response.body", "body": error_body(exc)})

    def _account(self, scope: Scope, state: dict[str, Any], status: int, started: float) -> None:
        elapsed = time.perf_counter() - started
        route = route_label(scope["path"])
        model = state.get("model", "")
        status = status or 499  # client went away before any response
        self.metrics.observe_request(route, model, status, elapsed)
        principal = state.get("principal")
        log.info(
            "request",
            extra={
                "method": scope["method"],
                "path": route if route != "unmatched" else scope["path"][:200],
                "status": status,
                "model": model or None,
                "principal": principal.id if principal else None,
                "duration_ms": round(elapsed * 1e3, 2),
            },
        )
