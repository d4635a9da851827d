"""Admin authorization and audit: the admin routes' one step for both.

``check`` asks the policy (``Authorizer``) and records a refusal in the audit trail. A
refusal is a 404 when the caller has no standing in the object's tenant (so ids of
another tenant cannot be told from ids that do not exist), and a 403 otherwise, which
includes every platform-level resource. ``record`` writes an allowed act that the store
does not write itself (engine changes).

A refused request's resource and tenant come from its path, so they are the caller's
text: they are recorded with personal data masked (``prn_138****5678``), as every field a
client writes into an audit record is. (An id the store made, a prefix and 16 hex digits,
reads as no category, short of a digits-only one that passes as a card number.)
"""

from __future__ import annotations

from typing import Any

from starlette.requests import Request

from autoglm.errors import CentreManagedError, NotFoundError, PermissionDeniedError
from autoglm.privacy import GuardPolicy, PiiGuard
from autoglm.security.policy import Resource
from autoglm.store.directory import Act, Directory
from autoglm.store.models import valid_id

# Immutable once built (a compiled scanner, as a compiled regex): every category masked,
# whatever a tenant's policy lets through to a model.
_MASK_ALL = PiiGuard(GuardPolicy(default="mask"))


def _masked(text: str | None) -> str | None:
    return _MASK_ALL.apply(text).text if text else text


def ctx(request: Request) -> tuple[Any, Directory, Act]:
    rc = request.scope["state"]["ctx"]
    identity = rc.identity
    return identity, request.app.state.directory, Act(
        identity.id, rc.request_id, getattr(identity, "key_id", None), rc.client)


# On an edge node these come from the centre's snapshot (``edge.snapshot``): changing
# them here would be undone at the next sync. Principals and keys without a tenant (the
# node's own platform administrators) stay the node's.
_CENTRE_ALWAYS = ("tenant.", "project.", "limit.")
_CENTRE_IN_TENANTS = ("principal.", "binding.", "key.")
_READS = (".read", ".list")


def centre_managed(action: str, tenant_id: str | None) -> bool:
    if action.endswith(_READS):
        return False
    return action.startswith(_CENTRE_ALWAYS) or (
        tenant_id is not None and action.startswith(_CENTRE_IN_TENANTS))


def check(request: Request, action: str, tenant_id: str | None,
          project_id: str | None = None, resource: str = "") -> None:
    identity, directory, act = ctx(request)
    for named in (tenant_id, project_id):
        if named is not None and named != "?" and not valid_id(named):
            raise NotFoundError("not found")  # names nothing: no database, no audit row
    if request.app.state.authz.allows(identity, action,
                                      Resource(tenant_id=tenant_id, project_id=project_id)):
        if request.app.state.edge is not None and centre_managed(action, tenant_id):
            raise CentreManagedError(
                f"this is an edge node of {request.app.state.edge.url}: tenants, projects, "
                f"their principals and keys, and limits are managed there ({action})")
        return
    if tenant_id is None:
        status = 403  # a platform resource: nothing to hide
    else:
        standing = any(b.tenant_id in (None, tenant_id) for b in identity.bindings)
        status = 403 if standing else 404
    directory.record_denial(act, action, _masked(resource) or (_masked(tenant_id) or "platform"),
                            _masked(tenant_id), status)
    if status == 404:
        raise NotFoundError("not found")
    raise PermissionDeniedError(f"not allowed: {action}")


def record(request: Request, action: str, resource: str, detail: dict[str, Any]) -> None:
    _, directory, act = ctx(request)
    directory.record_act(act, action, resource, None, detail)
