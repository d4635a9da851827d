"""The console's edge, called by the gateway middleware for every ``/console`` request
(``api/middleware.py``), in place of bearer-key authentication:

1. security headers on every answer: a strict Content-Security-Policy (no inline script
   or style, nothing from elsewhere), no framing, no referrer beyond the origin;
2. a change (POST, PUT, PATCH, DELETE) must come from this origin: ``Sec-Fetch-Site``, when
   the browser sends it, must be ``same-origin``; else an ``Origin`` header must name this
   host; a 403 otherwise (a form on another site, even with the victim's cookie);
3. the session cookie -> the session's identity (``ctx.identity``), whose key is looked up
   again each time; a session whose role may no longer ``console.use`` counts as none;
4. a page that needs a session without one: a redirect to the sign-in page; a
   ``/console/api/`` call: 401. An API change must carry the session's CSRF token in
   ``X-CSRF-Token`` (forms carry it as a field, checked by ``console.web.page``).
"""

from __future__ import annotations

import asyncio
from http.cookies import CookieError, SimpleCookie
from typing import Any
from urllib.parse import quote, urlsplit

from starlette.responses import RedirectResponse
from starlette.types import ASGIApp, Scope

from autoglm.console.sessions import Session, SessionStore, same_token
from autoglm.errors import AuthenticationError, PermissionDeniedError
from autoglm.pipeline.context import RequestContext
from autoglm.security.access import Authorizer
from autoglm.security.policy import may_ever

SESSION_COOKIE = "autoglm_session"
LOGIN_COOKIE = "autoglm_login"  # the sign-in form's double-submit token
LANG_COOKIE = "autoglm_lang"
COOKIE_PATH = "/console"
API_PREFIX = "/console/api/"
STATIC_PREFIX = "/console/static/"
CSRF_HEADER = b"x-csrf-token"
USE = "console.use"  # the policy's action for signing in to the console
UNSAFE = frozenset({"POST", "PUT", "PATCH", "DELETE"})
CSP = ("default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
       "connect-src 'self'; font-src 'self'; object-src 'none'; frame-ancestors 'none'; "
       "base-uri 'none'; form-action 'self'")
SECURITY_HEADERS = (
    (b"content-security-policy", CSP.encode()),
    (b"x-frame-options", b"DENY"),
    (b"referrer-policy", b"same-origin"),
    (b"cross-origin-opener-policy", b"same-origin"),
)
CROSS_ORIGIN = "a change to the console must come from the console's own pages"
_DEFAULT_PORT = {"http": "80", "https": "443"}


def cookies_of(scope: Scope) -> dict[str, str]:
    """The request's cookies; a malformed header counts as none."""
    jar = SimpleCookie()
    for key, value in scope["headers"]:
        if key == b"cookie":
            try:
                jar.load(value.decode("latin-1"))
            except CookieError:
                return {}
    return {name: morsel.value for name, morsel in jar.items()}


def header(scope: Scope, name: bytes) -> str | None:
    for key, value in scope["headers"]:
        if key == name:
            return value.decode("latin-1")
    return None


def _netloc(scheme: str, netloc: str) -> str:
    """host[:port], lower case, the scheme's default port left out."""
    parts = urlsplit("//" + netloc)
    try:
        port = parts.port
    except ValueError:
        return netloc.lower()
    host = parts.hostname or ""
    return host if port is None or str(port) == _DEFAULT_PORT.get(scheme) else f"{host}:{port}"


def same_origin(scope: Scope) -> bool:
    """Whether a change request comes from this origin, as the browser tells it."""
    site = header(scope, b"sec-fetch-site")
    if site is not None:
        return site == "same-origin"
    origin = header(scope, b"origin")
    if origin is None:
        return True  # not a browser that says (curl, tests): the CSRF token still applies
    parts = urlsplit(origin)
    host = header(scope, b"host") or ""
    scheme = scope.get("scheme", "http")
    return (parts.scheme == scheme and bool(parts.netloc)
            and _netloc(parts.scheme, parts.netloc) == _netloc(scheme, host))


class ConsoleGate:
    def __init__(self, sessions: SessionStore, authz: Authorizer) -> None:
        self.sessions = sessions
        self.authz = authz

    async def session_of(self, scope: Scope) -> Session | None:
        token = cookies_of(scope).get(SESSION_COOKIE)
        if not token:
            return None
        session = await asyncio.to_thread(self.sessions.resolve, token)
        if session is None or not may_ever(self.authz.policy.current(), session.identity, USE):
            return None
        return session

    async def admit(self, scope: Scope, ctx: RequestContext, signed_in: bool
                    ) -> ASGIApp | None:
        """Let the request through (None), or the answer to send instead of it; raises
        the refusals (403 from another origin, 401 for an API call without a session)."""
        ctx.response_headers.extend(SECURITY_HEADERS)
        method, path = scope["method"], scope["path"]
        if method in UNSAFE and not same_origin(scope):
            raise PermissionDeniedError(CROSS_ORIGIN, code="csrf_failed")
        if not signed_in and path.startswith(STATIC_PREFIX):  # its files: nobody to look up
            scope["state"]["console"] = None
            return None
        session = await self.session_of(scope)
        scope["state"]["console"] = session
        if session is not None:
            ctx.identity = session.identity
        if not signed_in:
            return None
        api = path.startswith(API_PREFIX)
        if session is None:
            if api:
                raise AuthenticationError("Sign in to the console first (POST /console/login).")
            return _to_sign_in(scope)
        if api and method in UNSAFE and not same_token(
                session.csrf, header(scope, CSRF_HEADER)):
            raise PermissionDeniedError("missing or wrong X-CSRF-Token", code="csrf_failed")
        return None


def _to_sign_in(scope: Scope) -> RedirectResponse:
    """To the sign-in page, coming back here afterwards (a page, never a change)."""
    target = "/console/login"
    if scope["method"] == "GET":
        here = scope["path"]
        query = scope.get("query_string", b"").decode("latin-1")
        target += "?next=" + quote(here + ("?" + query if query else ""), safe="")
    return RedirectResponse(target, status_code=303)


def safe_next(value: Any) -> str:
    """Where to go after sign-in: a console page of this site, nothing else."""
    if (isinstance(value, str) and value.startswith("/console") and "//" not in value
            and "\\" not in value and value.isprintable() and len(value) <= 2000):
        return value
    return "/console"
