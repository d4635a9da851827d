"""``/admin/v1`` identity routes: tenants, projects, principals, role bindings, keys, policy.

Each route finds the object's tenant, then asks the policy (``Authorizer``). A refusal is
a 404 when the caller has no standing in that tenant (so another tenant's ids are
indistinguishable from ids that do not exist) and a 403 otherwise. Every act is audited;
refusals too. Lists are keyset-paginated: ``?limit=`` (1-100, default 20) and
``?after=<id>``; answers carry ``has_more`` and ``last_id``.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field
from starlette.requests import Request
from starlette.responses import JSONResponse

from autoglm.api.admin_authz import check as _check
from autoglm.api.admin_authz import ctx as _ctx
from autoglm.api.body import blocking, json_body
from autoglm.errors import InvalidRequestError, NotFoundError
from autoglm.pipeline.schemas import parse
from autoglm.security.policy import Resource, parse_policy
from autoglm.store.directory import Directory, view
from autoglm.store.models import (
    ROLES,
    ApiKey,
    Principal,
    Project,
    RoleBinding,
    Tenant,
    valid_id,
)

MAX_HOURS = 24 * 366 * 10  # ten years: the longest expiry or grace period accepted
ModelName = Annotated[str, Field(min_length=1, max_length=256)]


class TenantIn(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)
    name: str = Field(min_length=1, max_length=128)


class GrantIn(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)
    models: list[ModelName] = Field(max_length=1000)


class ProjectIn(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)
    name: str = Field(min_length=1, max_length=128)
    allowed_models: list[ModelName] = Field(default_factory=list, max_length=1000)


class ProjectPatch(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)
    allowed_models: list[ModelName] = Field(max_length=1000)


class PrincipalIn(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)
    name: str = Field(min_length=1, max_length=128)
    kind: str = Field("user", pattern="^(user|service)$")


class BindingIn(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)
    # the roles a binding may name, described in /openapi.json; the directory checks them
    role: str = Field(json_schema_extra={"enum": [r for r in ROLES if r != "platform_admin"]})
    project_id: str | None = None


class KeyIn(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)
    name: str = Field("", max_length=128)
    projects: list[str] | None = None
    models: list[str] | None = None
    actions: list[str] | None = None
    # from one minute to ten years: anything else is a mistake (or an overflow)
    expires_in_hours: float | None = Field(None, ge=1 / 60, le=MAX_HOURS)


class RotateIn(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)
    grace_hours: float = Field(24.0, ge=0, le=MAX_HOURS)
    immediate: bool = False


def _owned(request: Request, model: type, param: str, action: str,
           tenant_of: Callable[[Any], str | None] = lambda row: row.tenant_id) -> Any:
    """The object named by path parameter ``param``, if the caller may do ``action`` on it.
    A missing object is checked against a tenant nobody has, so it answers exactly like an
    object of another tenant."""
    id_ = request.path_params[param]
    if not valid_id(id_):
        raise NotFoundError("not found")  # names nothing: no database, no audit row
    row = _ctx(request)[1].find(model, id_)
    _check(request, action, tenant_of(row) if row is not None else "?", resource=id_)
    if row is None:
        raise NotFoundError("not found")
    return row


def _page_args(request: Request) -> tuple[int, str | None]:
    raw = request.query_params.get("limit", "20")
    if not (raw.isascii() and raw.isdigit()) or not 1 <= int(raw) <= 100:
        raise InvalidRequestError("limit must be an integer from 1 to 100", param="limit")
    after = request.query_params.get("after")
    if after is not None and not valid_id(after):
        raise InvalidRequestError("after must be an id from an earlier page", param="after")
    return int(raw), after


def _page(rows: list[Any], more: bool) -> JSONResponse:
    data = [view(r) for r in rows]
    return JSONResponse({"object": "list", "data": data, "has_more": more,
                         "last_id": data[-1]["id"] if data else None})


def _found(directory: Directory, model: type, id_: str) -> Any:
    row = directory.find(model, id_)
    if row is None:
        raise NotFoundError("not found")
    return row


# --- tenants --------------------------------------------------------------------------------
@blocking
def create_tenant(request: Request, body: bytes) -> JSONResponse:
    _check(request, "tenant.create", None, resource="tenants")
    args: TenantIn = parse(TenantIn, json_body(body))
    _, directory, act = _ctx(request)
    return JSONResponse(view(directory.create_tenant(act, args.name)), status_code=201)


@blocking
def list_tenants(request: Request, body: bytes) -> JSONResponse:
    identity, directory, _ = _ctx(request)
    limit, after = _page_args(request)
    authz = request.app.state.authz
    if authz.allows(identity, "tenant.list", Resource()):
        return _page(*directory.page(Tenant, limit=limit, after=after))
    own = identity.tenant_id  # others see their own tenant, if they may read it
    if not own or not authz.allows(identity, "tenant.read", Resource(tenant_id=own)):
        _check(request, "tenant.list", None, resource="tenants")  # refused, and audited
    rows = [directory.get(Tenant, own)] if after is None or own > after else []
    return _page(rows, False)


@blocking
def get_tenant(request: Request, body: bytes) -> JSONResponse:
    _, directory, _ = _ctx(request)
    tid = request.path_params["tenant"]
    _check(request, "tenant.read", tid, resource=tid)
    return JSONResponse(view(_found(directory, Tenant, tid)))


@blocking
def get_grant(request: Request, body: bytes) -> JSONResponse:
    """The models granted to a tenant (its projects and callers use no others)."""
    _, directory, _ = _ctx(request)
    tid = request.path_params["tenant"]
    _check(request, "tenant.read", tid, resource=tid)
    t = _found(directory, Tenant, tid)
    return JSONResponse({"tenant_id": t.id, "models": list(t.granted_models or [])})


@blocking
def set_grant(request: Request, body: bytes) -> JSONResponse:
    """Replace a tenant's grant (platform admins): projects can only narrow it."""
    _, directory, act = _ctx(request)
    tid = request.path_params["tenant"]
    _check(request, "tenant.grant", tid, resource=tid)
    _found(directory, Tenant, tid)
    args: GrantIn = parse(GrantIn, json_body(body))
    t = directory.grant_models(act, tid, args.models)
    request.app.state.authz.forget("tenant", tid)
    return JSONResponse({"tenant_id": t.id, "models": list(t.granted_models)})


# --- projects -------------------------------------------------------------------------------
@blocking
def create_project(request: Request, body: bytes) -> JSONResponse:
    _, directory, act = _ctx(request)
    tid = request.path_params["tenant"]
    _check(request, "project.create", tid, resource=tid)
    _found(directory, Tenant, tid)
    args: ProjectIn = parse(ProjectIn, json_body(body))
    project = directory.create_project(act, tid, args.name, args.allowed_models)
    return JSONResponse(view(project), status_code=201)


@blocking
def list_projects(request: Request, body: bytes) -> JSONResponse:
    _, directory, _ = _ctx(request)
    tid = request.path_params["tenant"]
    _check(request, "project.list", tid, resource=tid)
    limit, after = _page_args(request)
    return _page(*directory.page(Project, limit=limit, after=after, tenant_id=tid))


@blocking
def get_project(request: Request, body: bytes) -> JSONResponse:
    """One project."""
    return JSONResponse(view(_owned(request, Project, "project", "project.read")))


@blocking
def update_project(request: Request, body: bytes) -> JSONResponse:
    project = _owned(request, Project, "project", "project.update")
    _, directory, act = _ctx(request)
    args: ProjectPatch = parse(ProjectPatch, json_body(body))
    updated = directory.update_project(act, project.id, args.allowed_models)
    request.app.state.authz.forget("project", project.id)
    return JSONResponse(view(updated))


# --- principals and bindings ----------------------------------------------------------------
@blocking
def create_principal(request: Request, body: bytes) -> JSONResponse:
    _, directory, act = _ctx(request)
    tid = request.path_params["tenant"]
    _check(request, "principal.create", tid, resource=tid)
    _found(directory, Tenant, tid)
    args: PrincipalIn = parse(PrincipalIn, json_body(body))
    return JSONResponse(view(directory.create_principal(act, tid, args.name, args.kind)),
                        status_code=201)


@blocking
def list_principals(request: Request, body: bytes) -> JSONResponse:
    _, directory, _ = _ctx(request)
    tid = request.path_params["tenant"]
    _check(request, "principal.list", tid, resource=tid)
    limit, after = _page_args(request)
    return _page(*directory.page(Principal, limit=limit, after=after, tenant_id=tid))


def _principal(request: Request, action: str) -> Principal:
    return _owned(request, Principal, "principal", action)


@blocking
def get_principal(request: Request, body: bytes) -> JSONResponse:
    """One principal, with its role bindings."""
    prn = _principal(request, "principal.read")
    _, directory, _ = _ctx(request)
    bindings, _more = directory.page(RoleBinding, limit=100, after=None, principal_id=prn.id)
    return JSONResponse({**view(prn), "bindings": [view(b) for b in bindings]})


@blocking
def create_binding(request: Request, body: bytes) -> JSONResponse:
    prn = _principal(request, "binding.create")
    _, directory, act = _ctx(request)
    args: BindingIn = parse(BindingIn, json_body(body))
    return JSONResponse(view(directory.bind(act, prn.id, args.role, args.project_id)),
                        status_code=201)


@blocking
def delete_binding(request: Request, body: bytes) -> JSONResponse:
    b = _owned(request, RoleBinding, "binding", "binding.delete")
    if b.tenant_id is None:  # platform bindings are not managed here
        raise NotFoundError("not found")
    _, directory, act = _ctx(request)
    return JSONResponse(view(directory.unbind(act, b.id)))


# --- keys -------------------------------------------------------------------------------------
@blocking
def create_key(request: Request, body: bytes) -> JSONResponse:
    prn = _principal(request, "key.create")
    _, directory, act = _ctx(request)
    args: KeyIn = parse(KeyIn, json_body(body))
    expires = (datetime.now(UTC) + timedelta(hours=args.expires_in_hours)
               if args.expires_in_hours else None)
    secret, record = request.app.state.auth.keys.create(
        prn.id, name=args.name, projects=args.projects, models=args.models,
        actions=args.actions, expires_at=expires,
        also=directory.audited(act, "key.create", prn.tenant_id, {"principal": prn.id}))
    return JSONResponse({**view(record), "key": secret}, status_code=201)


@blocking
def list_keys(request: Request, body: bytes) -> JSONResponse:
    prn = _principal(request, "key.list")
    _, directory, _ = _ctx(request)
    limit, after = _page_args(request)
    return _page(*directory.page(ApiKey, limit=limit, after=after, principal_id=prn.id))


def _key(request: Request, action: str) -> tuple[ApiKey, str | None]:
    directory = _ctx(request)[1]
    key = _owned(request, ApiKey, "key", action,
                 tenant_of=lambda k: directory.tenant_of_principal(k.principal_id))
    return key, directory.tenant_of_principal(key.principal_id)


@blocking
def get_key(request: Request, body: bytes) -> JSONResponse:
    """One key's record (never its secret)."""
    key, _ = _key(request, "key.read")
    return JSONResponse(view(key))


@blocking
def rotate_key(request: Request, body: bytes) -> JSONResponse:
    key, tenant = _key(request, "key.rotate")
    _, directory, act = _ctx(request)
    args: RotateIn = parse(RotateIn, json_body(body) if body else {})
    grace = timedelta(0) if args.immediate else timedelta(hours=args.grace_hours)
    with request.app.state.locks.hold(f"key-rotate:{key.id}", what=f"a rotation of {key.id}"):
        secret, new = request.app.state.auth.keys.rotate(
            key.id, grace, also=directory.audited(act, "key.rotate", tenant,
                                                  {"grace_hours": grace.total_seconds() / 3600}))
    return JSONResponse({**view(new), "key": secret, "rotated_from": key.id}, status_code=201)


@blocking
def revoke_key(request: Request, body: bytes) -> JSONResponse:
    key, tenant = _key(request, "key.revoke")
    _, directory, act = _ctx(request)
    record = request.app.state.auth.keys.revoke(
        key.id, also=directory.audited(act, "key.revoke", tenant))
    return JSONResponse(view(record))


# --- policy -------------------------------------------------------------------------------------
@blocking
def get_policy(request: Request, body: bytes) -> JSONResponse:
    _check(request, "policy.read", None, resource="policy")
    store = request.app.state.authz.policy
    policy = store.current()
    return JSONResponse({"source": policy.source, "last_error": store.last_error,
                         "policy": policy.doc.model_dump()})


@blocking
def validate_policy(request: Request, body: bytes) -> JSONResponse:
    _check(request, "policy.validate", None, resource="policy")
    text = body.decode("utf-8", errors="replace")
    try:
        parse_policy(text, "request body")
    except ValueError as exc:
        return JSONResponse({"valid": False, "error": str(exc)})
    return JSONResponse({"valid": True, "error": None})
