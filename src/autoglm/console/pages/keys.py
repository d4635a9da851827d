"""API keys: create (the secret shown once, on the answer to the form, never again),
rotate with a grace period, revoke. Each through the ``/admin/v1`` key handlers, so each
is checked and audited as there; a revoked key's console sessions end with it."""

from __future__ import annotations

import asyncio

from starlette.responses import Response

from autoglm.api import identity as admin
from autoglm.console.pages.directory import hours
from autoglm.console.web import View, page


def _secret_page(view: View, made: dict, principal_id: str) -> Response:
    return view.render("secret.html", key=made, secret=made["key"],
                       principal_id=principal_id, rotated_from=made.get("rotated_from"))


@page
async def create_key(view: View) -> Response:
    pid = view.request.path_params["principal"]
    body: dict = {"name": view.field("name")}
    if view.fields("projects"):
        body["projects"] = view.fields("projects")
    if view.fields("models"):
        body["models"] = view.fields("models")
    expires = hours(view, "expires_in_hours")
    if expires is not None:
        body["expires_in_hours"] = expires
    made = await view.call(admin.create_key, method="POST", params={"principal": pid},
                           body=body)
    return _secret_page(view, made, pid)


@page
async def rotate_key(view: View) -> Response:
    kid = view.request.path_params["key"]
    body: dict = {"immediate": view.field("immediate") == "on"}
    grace = hours(view, "grace_hours")
    if grace is not None:
        body["grace_hours"] = grace
    made = await view.call(admin.rotate_key, method="POST", params={"key": kid}, body=body)
    return _secret_page(view, made, made["principal_id"])


@page
async def revoke_key(view: View) -> Response:
    kid = view.request.path_params["key"]
    gone = await view.call(admin.revoke_key, method="POST", params={"key": kid})
    await asyncio.to_thread(view.app.state.console.sessions.close_key, kid)
    return view.back(f"/console/principals/{gone['principal_id']}")
