"""What every console page shares: the templates, the page wrapper, and calls into the
admin API's own handlers.

Pages show what the admin API answers the signed-in identity, by calling the very
handlers of ``/admin/v1`` and ``/v1/models`` in-process (``View.call``) with the session's
identity: the same policy checks, the same 403/404s, the same masking, the same audit
records. A page never asks the database for something the API would not give the caller.
Whether to show a change's form is asked of the same policy (``View.may``); the handler
decides again when the form is sent.
"""

from __future__ import annotations

import functools
from collections.abc import Awaitable, Callable
from typing import Any
from urllib.parse import urlencode, urlsplit

import orjson
from jinja2 import Environment, PackageLoader, select_autoescape
from starlette.datastructures import FormData
from starlette.requests import Request
from starlette.responses import HTMLResponse, RedirectResponse, Response

from autoglm.console.gate import LANG_COOKIE, UNSAFE, USE, cookies_of, safe_next
from autoglm.console.i18n import LANGS, Labels, choose
from autoglm.console.sessions import Session, same_token
from autoglm.errors import AutoGLMError, PermissionDeniedError
from autoglm.security.policy import Resource, may_ever
from autoglm.timefmt import stamp

Endpoint = Callable[[Request], Awaitable[Response]]

# (path, label, the action whose holders see the link; None: everyone signed in)
NAV: tuple[tuple[str, str, str | None], ...] = (
    ("/console", "nav.home", None),
    ("/console/tenants", "nav.tenants", "tenant.read"),
    ("/console/models", "nav.models", "model.list"),
    ("/console/usage", "nav.usage", "usage.read"),
    ("/console/audit", "nav.audit", "audit.read"),
    ("/console/alerts", "nav.alerts", "alert.read"),
    ("/console/playground", "nav.playground", "inference"),
)


def templates() -> Environment:
    env = Environment(loader=PackageLoader("autoglm.console", "templates"),
                      autoescape=select_autoescape(["html"], default=True),
                      trim_blocks=True, lstrip_blocks=True)
    env.filters["when"] = lambda v: (v or "")[:19].replace("T", " ") if isinstance(v, str) else (
        stamp(v)[:19].replace("T", " ") if v else "")
    return env


class View:
    """One console request: who asks, in which language, and the page's tools."""

    def __init__(self, request: Request) -> None:
        self.request = request
        self.app = request.app
        self.session: Session | None = request.scope["state"].get("console")
        self.identity: Any = self.session.identity if self.session is not None else None
        chosen = request.query_params.get("lang")
        self.lang = choose(chosen, cookies_of(request.scope).get(LANG_COOKIE),
                           request.headers.get("accept-language"))
        self.set_lang = chosen in LANGS
        self.t: Labels = Labels(self.lang)
        self.form: FormData | None = None

    # --- the policy ------------------------------------------------------------------------
    def may(self, action: str, tenant: str | None = None, project: str | None = None) -> bool:
        return self.identity is not None and self.app.state.authz.allows(
            self.identity, action, Resource(tenant_id=tenant, project_id=project))

    def may_ever(self, action: str) -> bool:
        return self.identity is not None and may_ever(
            self.app.state.authz.policy.current(), self.identity, action)

    # --- the admin API, in-process ----------------------------------------------------------
    async def call(self, endpoint: Endpoint, *, method: str = "GET",
                   params: dict[str, str] | None = None,
                   query: dict[str, Any] | None = None, body: Any = None) -> Any:
        """What ``endpoint`` (an admin API handler) answers this identity, as data; its
        refusals are raised as they are (``AutoGLMError``)."""
        scope = {**self.request.scope, "method": method, "path_params": params or {},
                 "query_string": urlencode({k: v for k, v in (query or {}).items()
                                            if v not in (None, "")}, doseq=True).encode()}
        raw = orjson.dumps(body) if body is not None else b""
        sent = [False]

        async def receive() -> dict[str, Any]:
            if sent[0]:
                return {"type": "http.disconnect"}
            sent[0] = True
            return {"type": "http.request", "body": raw, "more_body": False}

        response = await endpoint(Request(scope, receive))
        return orjson.loads(response.body)

    async def maybe(self, endpoint: Endpoint, **kw: Any) -> Any:
        """As ``call``, None where the caller may not read it (a section left out)."""
        try:
            return await self.call(endpoint, **kw)
        except AutoGLMError as exc:
            if exc.status in (403, 404):
                return None
            raise

    # --- the form of a change ------------------------------------------------------------
    def field(self, name: str, default: str = "") -> str:
        value = self.form.get(name) if self.form is not None else None
        return value.strip() if isinstance(value, str) else default

    def fields(self, name: str) -> list[str]:
        if self.form is None:
            return []
        return [v.strip() for v in self.form.getlist(name) if isinstance(v, str) and v.strip()]

    # --- answers --------------------------------------------------------------------------
    def render(self, template: str, status: int = 200, **values: Any) -> HTMLResponse:
        env: Environment = self.app.state.console.templates
        path = self.request.url.path
        nav = [(href, self.t(label), href == path or (href != "/console"
                                                      and path.startswith(href + "/")))
               for href, label, action in NAV
               if self.identity is not None and (action is None or self.may_ever(action))]
        html = env.get_template(template).render(
            t=self.t, lang=self.lang, other_langs=[x for x in LANGS if x != self.lang],
            identity=self.identity, session=self.session, nav=nav, path=path,
            csrf=self.session.csrf if self.session is not None else "", **values)
        response = HTMLResponse(html, status_code=status)
        if self.set_lang:
            response.set_cookie(LANG_COOKIE, self.lang, max_age=365 * 86400, path="/console",
                                samesite="strict", secure=self.secure)
        return response

    def error(self, exc: AutoGLMError) -> HTMLResponse:
        referer = urlsplit(self.request.headers.get("referer", ""))
        back = safe_next(referer.path + ("?" + referer.query if referer.query else ""))
        return self.render("error.html", status=exc.status, message=exc.message,
                           code=exc.code or exc.type, back=back)

    def back(self, to: str) -> RedirectResponse:
        """After a change: back to the page (POST, then a redirect, then GET)."""
        return RedirectResponse(to, status_code=303)

    @property
    def secure(self) -> bool:
        return self.request.url.scheme == "https"


def page(fn: Callable[[View], Awaitable[Response]]) -> Endpoint:
    """A console page or form. A form (POST) must carry the session's CSRF token in its
    ``csrf`` field (the gate already refused other origins); a refusal from the admin
    handlers becomes an error page with the same status."""

    @functools.wraps(fn)
    async def endpoint(request: Request) -> Response:
        view = View(request)
        try:
            if request.method in UNSAFE:
                view.form = await request.form()
                token = view.form.get("csrf")
                if view.session is None or not same_token(
                        view.session.csrf, token if isinstance(token, str) else None):
                    raise PermissionDeniedError("The form was not sent from this session's "
                                                "page; reload the page and try again.",
                                                code="csrf_failed")
            return await fn(view)
        except AutoGLMError as exc:
            return view.error(exc)

    return endpoint


__all__ = ["USE", "View", "page", "templates"]
