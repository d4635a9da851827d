"""Tenants, their projects and principals, and role bindings: pages over the handlers of
``/admin/v1`` (``api/identity.py``), which check, change and audit exactly as for the API.

Each section is shown when the API lets the caller read it, and each form when the
policy lets the caller make the change (the handler decides again when it is sent).
"""

from __future__ import annotations

from starlette.responses import Response

from autoglm.api import identity as admin
from autoglm.console.web import View, page
from autoglm.errors import InvalidRequestError

PAGE = 100  # the admin API's largest page


@page
async def tenants(view: View) -> Response:
    """The tenants the caller may see; a form for a new one (platform admins)."""
    if view.form is not None:
        made = await view.call(admin.create_tenant, method="POST",
                               body={"name": view.field("name")})
        return view.back(f"/console/tenants/{made['id']}")
    found = await view.call(admin.list_tenants, query={"limit": PAGE,
                                                       "after": view.request.query_params
                                                       .get("after")})
    return view.render("tenants.html", tenants=found["data"], has_more=found["has_more"],
                       last_id=found["last_id"], can_create=view.may("tenant.create"))


def _models(view: View) -> list[str]:
    return sorted(view.app.state.engines)


@page
async def tenant(view: View) -> Response:
    """One tenant: its model grant, projects and principals."""
    tid = view.request.path_params["tenant"]
    t = await view.call(admin.get_tenant, params={"tenant": tid})
    projects = await view.maybe(admin.list_projects, params={"tenant": tid},
                                query={"limit": PAGE})
    principals = await view.maybe(admin.list_principals, params={"tenant": tid},
                                  query={"limit": PAGE})
    return view.render(
        "tenant.html", tenant=t, projects=projects, principals=principals,
        served=_models(view), can_grant=view.may("tenant.grant", tid),
        can_project=view.may("project.create", tid),
        can_principal=view.may("principal.create", tid))


@page
async def set_grant(view: View) -> Response:
    tid = view.request.path_params["tenant"]
    await view.call(admin.set_grant, method="PUT", params={"tenant": tid},
                    body={"models": view.fields("models")})
    return view.back(f"/console/tenants/{tid}")


@page
async def create_project(view: View) -> Response:
    tid = view.request.path_params["tenant"]
    made = await view.call(admin.create_project, method="POST", params={"tenant": tid},
                           body={"name": view.field("name"),
                                 "allowed_models": view.fields("models")})
    return view.back(f"/console/projects/{made['id']}")


@page
async def create_principal(view: View) -> Response:
    tid = view.request.path_params["tenant"]
    kind = view.field("kind", "user")
    made = await view.call(admin.create_principal, method="POST", params={"tenant": tid},
                           body={"name": view.field("name"), "kind": kind})
    return view.back(f"/console/principals/{made['id']}")


@page
async def project(view: View) -> Response:
    """One project and the models it may use; a change of that list (within the grant)."""
    pid = view.request.path_params["project"]
    if view.form is not None:
        await view.call(admin.update_project, method="PATCH", params={"project": pid},
                        body={"allowed_models": view.fields("models")})
        return view.back(f"/console/projects/{pid}")
    p = await view.call(admin.get_project, params={"project": pid})
    grant = await view.maybe(admin.get_grant, params={"tenant": p["tenant_id"]})
    choices = sorted(set(grant["models"] if grant else []) | set(p["allowed_models"] or []))
    return view.render("project.html", project=p, choices=choices,
                       can_update=view.may("project.update", p["tenant_id"], pid))


@page
async def principal(view: View) -> Response:
    """One principal: its role bindings and its keys, with the forms to change them."""
    pid = view.request.path_params["principal"]
    p = await view.call(admin.get_principal, params={"principal": pid})
    tid = p["tenant_id"]
    keys = await view.maybe(admin.list_keys, params={"principal": pid}, query={"limit": PAGE})
    projects = (await view.maybe(admin.list_projects, params={"tenant": tid},
                                 query={"limit": PAGE}) if tid else None)
    grant = await view.maybe(admin.get_grant, params={"tenant": tid}) if tid else None
    models = grant["models"] if grant is not None else _models(view)
    return view.render(
        "principal.html", principal=p, keys=keys, secret=None,
        projects=projects["data"] if projects else [], models=models,
        can_bind=view.may("binding.create", tid), can_unbind=view.may("binding.delete", tid),
        can_key=view.may("key.create", tid), can_rotate=view.may("key.rotate", tid),
        can_revoke=view.may("key.revoke", tid))


@page
async def create_binding(view: View) -> Response:
    pid = view.request.path_params["principal"]
    role = view.field("role")
    project_id = view.field("project") or None
    await view.call(admin.create_binding, method="POST", params={"principal": pid},
                    body={"role": role, "project_id": project_id})
    return view.back(f"/console/principals/{pid}")


@page
async def delete_binding(view: View) -> Response:
    bid = view.request.path_params["binding"]
    gone = await view.call(admin.delete_binding, method="DELETE", params={"binding": bid})
    return view.back(f"/console/principals/{gone['principal_id']}")


def hours(view: View, name: str) -> float | None:
    """A number of hours from a form field (empty: None); a 400 naming it otherwise."""
    raw = view.field(name)
    if not raw:
        return None
    try:
        return float(raw)
    except ValueError:
        raise InvalidRequestError(f"{name} must be a number of hours", param=name) from None
