"""Signing in and out, and the overview of who is signed in.

``POST /console/login`` takes an API key from the form, authenticates it exactly as a
bearer key (``Authenticator``: the same failed-attempt limit per address), and, if the
policy lets its identity ``console.use``, opens a session: the cookie ``autoglm_session``
(HttpOnly, SameSite=Strict, Path=/console, Secure over HTTPS) holds the session's random
token, never the key. The sign-in form itself carries a double-submit token (a
SameSite=Strict cookie and the same value in the form), so another site cannot sign a
browser in under a key of its choosing. Sign-in (allowed or refused) and sign-out are
audit records.
"""

from __future__ import annotations

import asyncio
import secrets

from starlette.requests import Request
from starlette.responses import RedirectResponse, Response

from autoglm.audit import Record
from autoglm.console.gate import (
    COOKIE_PATH,
    LOGIN_COOKIE,
    SESSION_COOKIE,
    USE,
    cookies_of,
    safe_next,
)
from autoglm.console.sessions import same_token
from autoglm.console.web import View, page
from autoglm.errors import AuthenticationError, PermissionDeniedError, RateLimitError
from autoglm.security.policy import may_ever
from autoglm.store.directory import Act
from autoglm.store.models import ApiKey

LOGIN_TOKEN_AGE_S = 3600


def _act(view: View, identity: object) -> Act:
    rc = view.request.scope["state"]["ctx"]
    return Act(getattr(identity, "id", "anonymous"), rc.request_id,
               getattr(identity, "key_id", None), rc.client)


def _form(view: View, status: int = 200, failed: str = "", next_: str = "/console") -> Response:
    token = secrets.token_urlsafe(24)
    response = view.render("login.html", status=status, login_token=token, failed=failed,
                           next=next_)
    response.set_cookie(LOGIN_COOKIE, token, max_age=LOGIN_TOKEN_AGE_S, path=COOKIE_PATH,
                        httponly=True, samesite="strict", secure=view.secure)
    return response


async def login_page(request: Request) -> Response:
    """The sign-in form (a signed-in visitor goes on to the console)."""
    view = View(request)
    next_ = safe_next(request.query_params.get("next"))
    if view.identity is not None:
        return RedirectResponse(next_, status_code=303)
    return _form(view, next_=next_)


def _refused(view: View, status: int, reason: str) -> None:
    rc = view.request.scope["state"]["ctx"]
    view.app.state.audit.record_refusal(Record(
        action="console.login", decision="deny", status=status, resource="console",
        client_addr=rc.client, request_id=rc.request_id, detail={"reason": reason}),
        durable=False)


async def login(request: Request) -> Response:
    """Check the key, open a session, set its cookie."""
    view = View(request)
    view.form = await request.form()
    next_ = safe_next(view.field("next"))
    if not same_token(cookies_of(request.scope).get(LOGIN_COOKIE, ""), view.field("csrf")):
        return view.error(PermissionDeniedError(
            "The sign-in form was not sent from this site's page; reload it and try again.",
            code="csrf_failed"))
    ctx = request.scope["state"]["ctx"]
    try:
        identity = await view.app.state.auth.authenticate(f"Bearer {view.field('key')}",
                                                          ctx.client)
    except RateLimitError as exc:
        return _form(view, exc.status, exc.message, next_)
    except AuthenticationError:
        _refused(view, 401, "bad key")
        return _form(view, 401, view.t("login.failed"), next_)
    if not may_ever(view.app.state.authz.policy.current(), identity, USE):
        _refused(view, 403, "console.use not allowed")
        return _form(view, 403, view.t("login.not_allowed"), next_)
    session = await asyncio.to_thread(view.app.state.console.sessions.open, identity)
    await asyncio.to_thread(view.app.state.directory.record_act, _act(view, identity),
                            "console.login", identity.key_id, identity.tenant_id, {})
    response = RedirectResponse(next_, status_code=303)
    response.set_cookie(SESSION_COOKIE, session.token, path=COOKIE_PATH, httponly=True,
                        samesite="strict", secure=view.secure)
    response.delete_cookie(LOGIN_COOKIE, path=COOKIE_PATH, httponly=True, samesite="strict",
                           secure=view.secure)
    return response


@page
async def logout(view: View) -> Response:
    """End the session."""
    session = view.session
    if session is not None:
        await asyncio.to_thread(view.app.state.console.sessions.close, session.token)
        await asyncio.to_thread(view.app.state.directory.record_act,
                                _act(view, view.identity), "console.logout",
                                session.key_id, view.identity.tenant_id, {})
    response = RedirectResponse("/console/login", status_code=303)
    response.delete_cookie(SESSION_COOKIE, path=COOKIE_PATH, httponly=True, samesite="strict",
                           secure=view.secure)
    return response


@page
async def home(view: View) -> Response:
    """Who is signed in, with which key, until when."""
    identity = view.identity
    own = None
    if identity.principal_id and view.may("principal.read", identity.tenant_id):
        own = f"/console/principals/{identity.principal_id}"
    return view.render("home.html", own=own,
                       key_display=await asyncio.to_thread(_display, view, identity.key_id))


def _display(view: View, key_id: str) -> str:
    row = view.app.state.directory.find(ApiKey, key_id)
    return row.display if row is not None else key_id
