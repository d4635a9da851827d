"""The gateway's HTTP edge, as one pure-ASGI middleware (cheap on the hot path):

1. request context: a typed ``RequestContext`` in ``scope["state"]["ctx"]``, with the
   request id (taken from a sane ``X-Request-ID`` or made; returned on every response and
   put on every log line through ``request_id_var``), the credentials and the project;
2. size limit: ``Content-Length`` over the limit is a 413 before reading; a chunked
   body is counted while it is read;
3. authentication of the protected routes that the inference pipeline does not
   authenticate itself (admin, model list); the web console's routes are admitted by
   its session cookie instead (``console.gate``);
4. errors: whatever a request raises becomes its OpenAI-shaped response here
   (``api/errors.py``); a failure after the response started is logged (streams end
   themselves with an error event);
5. access log and request metrics.

The inference endpoints (``RouteTable.direct``) are called from here, not through
Starlette's exception middleware and router: they are pure ASGI, need no route
parameters, and their errors become responses here either way.
"""

from __future__ import annotations

import asyncio
import logging
import os
import random
import re
import time

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from autoglm.api.errors import error_body, error_headers, to_error
from autoglm.api.metrics import Metrics
from autoglm.api.routes import RouteTable
from autoglm.audit import AuditLog, Record
from autoglm.console.gate import ConsoleGate
from autoglm.errors import AuthenticationError, AutoGLMError, PayloadTooLargeError
from autoglm.logs import AccessLog, request_id_var
from autoglm.pipeline.context import RequestContext
from autoglm.security.auth import Authenticator

log = logging.getLogger("autoglm.access")

UPLOAD_PATH = "/v1/files"
UPLOAD_FORM_BYTES = 64 * 1024  # the multipart form around an uploaded file
SAFE_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")
# Access-line fields the server fills itself: a matched route's template, and the model
# id, which is set only once the model was found among the configured ones. (An unmatched
# path is the caller's text and is masked.)
OWN_MATCHED = frozenset({"path", "model"})
OWN_UNMATCHED = frozenset({"model"})


class Given:
    """What the client says about its request, besides the body: all optional."""

    __slots__ = ("request_id", "authorization", "project", "length", "purpose", "consent")

    def __init__(self) -> None:
        self.request_id = self.authorization = self.project = self.length = None
        self.purpose = self.consent = None


def _headers(scope: Scope) -> Given:
    """The headers the edge reads, in one pass. The client's own request id comes as
    ``X-Client-Request-Id`` (OpenAI's name) or ``X-Request-ID``; processing purpose and
    consent id (GDPR Art. 30) as ``X-Processing-Purpose`` and ``X-Consent-Id``."""
    g = Given()
    for key, value in scope["headers"]:
        if key == b"authorization":
            g.authorization = value.decode("latin-1")
        elif key == b"content-length":
            g.length = value.decode("latin-1")
        elif key in (b"x-client-request-id", b"x-request-id"):
            if g.request_id is None or key == b"x-client-request-id":
                g.request_id = value.decode("latin-1")
        elif key == b"openai-project":
            g.project = value.decode("latin-1")
        elif key == b"x-processing-purpose":
            g.purpose = value.decode("latin-1")
        elif key == b"x-consent-id":
            g.consent = value.decode("latin-1")
    return g


def sane(value: str | None, pattern: re.Pattern[str] = re.compile(r"^[\w .:/@-]{1,256}$")
         ) -> str | None:
    """A client-supplied label kept as given when it is plain text, else dropped."""
    return value if value is not None and pattern.match(value) else None


LINGER_BYTES = 128 * 1024 * 1024  # read and dropped before a 413, at most
LINGER_S = 30.0


def _lingers(scope: Scope, length: str | None) -> bool:
    """Whether to read the rest of a refused body first. A client that sends the whole body
    before reading (Python's urllib does) gets a connection reset instead of the 413 if the
    server closes with unread bytes; as nginx's lingering close, read (and drop) them first,
    up to a bound. Not for a client that waits for 100-continue: it sends nothing more."""
    for key, value in scope["headers"]:
        if key == b"expect" and value.lower() == b"100-continue":
            return False
    return length is None or not length.isdigit() or int(length) <= LINGER_BYTES


async def _drain(receive: Receive) -> None:
    async def read_rest() -> None:
        seen = 0
        while seen <= LINGER_BYTES:
            message = await receive()
            if message["type"] != "http.request" or not message.get("more_body", False):
                return
            seen += len(message.get("body", b""))

    try:
        await asyncio.wait_for(read_rest(), LINGER_S)
    except asyncio.TimeoutError:
        pass


class GatewayMiddleware:
    def __init__(self, app: ASGIApp, *, auth: Authenticator, metrics: Metrics,
                 routes: RouteTable, max_body_bytes: int, tls: bool = False,
                 audit: AuditLog | None = None, upload_max_bytes: int | None = None,
                 console: ConsoleGate | None = None) -> None:
        self.app = app
        self.auth = auth
        self.console = console  # the web console's session check (``console.gate``)
        self.audit = audit  # failed authentication at the edge is recorded (folded)
        self.metrics = metrics
        self.routes = routes
        self.max_body = max_body_bytes
        # POST /v1/files (batch input files) has a limit of its own: the file's, plus the
        # multipart form around it
        self.upload_max = (upload_max_bytes + UPLOAD_FORM_BYTES
                           if upload_max_bytes is not None else max_body_bytes)
        self.access = AccessLog()
        # Request ids need to be unique, not secret: a seeded PRNG, no system call each.
        self.ids = random.Random(os.urandom(32))
        # On every response: no content sniffing, nothing kept by caches (an answer, a new
        # key's secret), and with TLS, browsers told to use nothing else.
        self.always_headers = [(b"x-content-type-options", b"nosniff"),
                               (b"cache-control", b"no-store")]
        if tls:
            self.always_headers.append(
                (b"strict-transport-security", b"max-age=31536000; includeSubDomains"))

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        g = _headers(scope)
        credentials, length = g.authorization, g.length
        rid = f"req_{self.ids.getrandbits(128):032x}"  # ours, always; the client's beside it
        theirs = g.request_id if g.request_id and SAFE_REQUEST_ID.match(g.request_id) else None
        token = request_id_var.set(rid)
        peer = scope.get("client")
        ctx = RequestContext(rid, "http", credentials, g.project or None,
                             client=peer[0] if peer else None, started=started,
                             client_request_id=theirs, purpose=sane(g.purpose),
                             consent_id=sane(g.consent))
        scope.setdefault("state", {})["ctx"] = ctx
        status_box = [0]
        id_headers = [(b"x-request-id", rid.encode())]
        if theirs is not None:
            id_headers.append((b"x-client-request-id", theirs.encode()))

        async def send_wrapper(message: Message) -> None:
            if message["type"] == "http.response.start":
                status_box[0] = message["status"]
                message["headers"] = [*message.get("headers", []), *id_headers,
                                      *ctx.response_headers, *self.always_headers]
            await send(message)

        max_body = (self.upload_max if scope["path"] == UPLOAD_PATH and scope["method"] == "POST"
                    else self.max_body)
        try:
            if length is not None and length.isdigit() and int(length) > max_body:
                raise PayloadTooLargeError(
                    f"Request body is {int(length)} bytes; the limit is {max_body} bytes.")
            if self.routes.edge_authenticated(scope["path"]):
                try:
                    ctx.identity = await self.auth.authenticate(credentials, ctx.client)
                except AuthenticationError as exc:
                    self._refused(scope, ctx, exc)
                    raise
            elif self.console is not None:
                signed_in = self.routes.console_route(scope["path"])
                if signed_in is not None:
                    instead = await self.console.admit(scope, ctx, signed_in)
                    if instead is not None:  # to the sign-in page
                        await instead(scope, receive, send_wrapper)
                        return
            direct = self.routes.direct.get((scope["method"], scope["path"]))
            await (direct or self.app)(scope, self._limited(receive, max_body), send_wrapper)
        except Exception as exc:  # noqa: BLE001 - the one place errors become responses
            err = to_error(exc)
            if status_box[0]:  # response already started: nothing more can be said
                log.error("error after response started", extra={"error": err.message})
            else:
                if isinstance(err, PayloadTooLargeError) and _lingers(scope, length) \
                        and not err.body_read:
                    await _drain(receive)
                await send_wrapper({"type": "http.response.start", "status": err.status,
                                    "headers": error_headers(err)})
                await send_wrapper({"type": "http.response.body", "body": error_body(err)})
        finally:
            self._account(scope, ctx, status_box[0], started)
            request_id_var.reset(token)

    def _refused(self, scope: Scope, ctx: RequestContext, exc: AutoGLMError) -> None:
        """A failed authentication: one audit record, identical ones folded per interval
        (queued: a flood of bad keys costs no commit each)."""
        if self.audit is None:
            return
        try:
            self.audit.record_refusal(Record(
                action="authenticate", decision="deny", status=exc.status,
                resource=self.routes.label(scope["path"]), client_addr=ctx.client,
                request_id=ctx.request_id, detail={"method": scope.get("method")}),
                durable=False)
        except AutoGLMError as err:
            log.error("an audit record could not be queued", extra={"reason": err.message})

    def _limited(self, receive: Receive, limit: int) -> Receive:
        seen = [0]

        async def wrapped() -> Message:
            message = await receive()
            if message["type"] == "http.request":
                seen[0] += len(message.get("body", b""))
                if seen[0] > limit:
                    exc = PayloadTooLargeError(
                        f"Request body exceeds the limit of {limit} bytes."
                    )
                    # the whole body is in already: nothing is left to drain before the
                    # 413 (waiting for more would wait for the client to give up)
                    exc.body_read = not message.get("more_body", False)
                    raise exc
            return message

        return wrapped

    def _account(self, scope: Scope, ctx: RequestContext, status: int, started: float) -> None:
        elapsed = time.perf_counter() - started
        route = self.routes.label(scope["path"])
        status = status or 499  # client went away before any response
        self.metrics.observe_request(route, ctx.model, status, elapsed)
        identity = ctx.identity
        matched = route != "unmatched"
        self.access.write({
            "method": scope["method"],
            "path": route if matched else scope["path"][:200],
            "status": status,
            "model": ctx.model or None,
            "principal": identity.id if identity is not None else None,
            "duration_ms": round(elapsed * 1e3, 2),
            **({"client_request_id": ctx.client_request_id} if ctx.client_request_id else {}),
        }, OWN_MATCHED if matched else OWN_UNMATCHED)
