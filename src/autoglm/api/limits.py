"""``/admin/v1/limits/{scope}/{id}``: the limits of one key, project or tenant.

``GET`` answers the effective limits (the settings' defaults for the scope with this id's
own on top) and the id's own; ``PUT`` sets the id's own, field by field: a field left
out or null keeps the default, ``0`` is unlimited; ``{}`` returns the id to the defaults.
Every change is audited (``limit.set``) and applies at once in this process, within
seconds in the others.

Actions: ``limit.read`` and ``limit.write`` in the tenant the key, project or tenant
belongs to (tenant admins may set their projects' and keys' limits; a tenant's limits
bound them all), except that a tenant's own limits are set at platform scope: nobody
lifts their own tenant's quota.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field
from starlette.requests import Request
from starlette.responses import JSONResponse

from autoglm.api.admin_authz import check, ctx
from autoglm.api.body import blocking, json_body
from autoglm.errors import NotFoundError
from autoglm.limits import SCOPES
from autoglm.pipeline.schemas import parse
from autoglm.store.models import ApiKey, Project, Tenant, valid_id

LIMIT_MAX = 10**12


class LimitsIn(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)
    requests_per_minute: int | None = Field(None, ge=0, le=LIMIT_MAX)
    tokens_per_minute: int | None = Field(None, ge=0, le=LIMIT_MAX)
    tokens_per_day: int | None = Field(None, ge=0, le=LIMIT_MAX)


_PREFIX = {"key": "key_", "project": "prj_", "tenant": "ten_"}


def _target(request: Request, action: str) -> tuple[str, str, str | None]:
    """(scope, id, tenant) of the path, checked: a 404 for what does not exist or belongs
    to a tenant the caller has no standing in."""
    scope, ident = request.path_params["scope"], request.path_params["id"]
    if scope not in SCOPES or not valid_id(ident) or not ident.startswith(_PREFIX[scope]):
        raise NotFoundError("not found")  # names nothing: no database, no audit row
    _, directory, _ = ctx(request)
    tenant: str | None = "?"  # a tenant nobody has: missing answers as another tenant's
    if scope == "tenant":
        row = directory.find(Tenant, ident)
        tenant = row.id if row is not None else "?"
    elif scope == "project":
        row = directory.find(Project, ident)
        tenant = row.tenant_id if row is not None else "?"
    else:
        row = directory.find(ApiKey, ident)
        if row is not None:
            tenant = directory.tenant_of_principal(row.principal_id)
    resource = f"{scope}:{ident}"
    if scope == "tenant" and action == "limit.write":
        check(request, action, None, resource=resource)  # platform admins only
    else:
        check(request, action, tenant, resource=resource)
    if row is None:
        raise NotFoundError("not found")
    return scope, ident, tenant if tenant != "?" else None


def _answer(request: Request, scope: str, ident: str) -> JSONResponse:
    book = request.app.state.meter.book
    limits = book.of(scope, ident)
    return JSONResponse({"scope": scope, "id": ident,
                         "effective": (limits.to_dict() if limits is not None else
                                       {"requests_per_minute": None, "tokens_per_minute": None,
                                        "tokens_per_day": None}),
                         "own": book.override_of(scope, ident),
                         "defaults": book.defaults[scope].to_dict()})


@blocking
def get_limits(request: Request, body: bytes) -> JSONResponse:
    """The effective limits of a key, project or tenant, its own and the defaults."""
    scope, ident, _ = _target(request, "limit.read")
    return _answer(request, scope, ident)


@blocking
def set_limits(request: Request, body: bytes) -> JSONResponse:
    """Set a key's, project's or tenant's own limits (audited)."""
    scope, ident, tenant = _target(request, "limit.write")
    args: LimitsIn = parse(LimitsIn, json_body(body))
    values: dict[str, Any] = args.model_dump()
    _, directory, act = ctx(request)
    directory.set_limits(act, scope, ident, tenant, values)
    request.app.state.meter.book.put(scope, ident, values)
    return _answer(request, scope, ident)
