"""Whose a file or a batch is, at the HTTP edge: the scope a new one gets, the check on
an existing one, the filter of lists, and the audit record of each act.

A new object goes to the project the request names (``OpenAI-Project``) or the caller's
only project, in that project's tenant; else to the caller's tenant. Creating it needs
``file.create`` / ``job.create`` there (a refusal is a 404 where the caller has no standing
in that tenant, a 403 otherwise, as for admin routes). Reading, deleting or cancelling an
existing one needs ``file.*`` / ``job.*`` on its tenant and project: anything else is a
404, the same as an id that does not exist, so no id of another tenant (or of a project
the caller cannot see) is ever confirmed. Refusals on objects that exist are audited.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from sqlalchemy.orm import Session
from starlette.requests import Request

from autoglm.api.admin_authz import check, ctx
from autoglm.batch.scope import Scope, Visible
from autoglm.errors import NotFoundError, PermissionDeniedError
from autoglm.security.policy import Resource
from autoglm.store.models import Project, valid_id


def new_scope(request: Request, action: str, what: str) -> Scope:
    """Where the caller's new object goes, if ``action`` is allowed there (blocking)."""
    identity, directory, _ = ctx(request)
    header = request.scope["state"]["ctx"].project
    project_id = request.app.state.authz.chosen_project(identity, header)
    tenant_id = identity.tenant_id
    if project_id is not None:
        project = directory.find(Project, project_id) if valid_id(project_id) else None
        if project is None:
            check(request, action, "?", resource=what)  # answers as another tenant's would
            raise NotFoundError("not found")
        tenant_id = project.tenant_id
    check(request, action, tenant_id, project_id, resource=what)
    return Scope(tenant_id, project_id, identity.id)


def owned(request: Request, row: Any, action: str, what: str, read: str | None = None) -> Any:
    """``row`` if the caller may do ``action`` on it (blocking). Refused: a 403 if it may
    ``read`` it (it sees the object anyway), else the 404 of an id that does not exist."""
    if row is None:
        raise NotFoundError(f"No such {what}.")
    identity, directory, act = ctx(request)
    authz = request.app.state.authz
    resource = Resource(tenant_id=row.tenant_id, project_id=row.project_id)
    if authz.allows(identity, action, resource):
        return row
    seen = read is not None and authz.allows(identity, read, resource)
    directory.record_denial(act, action, row.id, row.tenant_id, 403 if seen else 404)
    if seen:
        raise PermissionDeniedError(f"not allowed: {action}")
    raise NotFoundError(f"No such {what}.")


def visible(request: Request, action: str) -> Visible:
    """The objects the caller's lists show: of the project the request names, else of
    its tenant, narrowed to the projects it may read in unless a tenant-wide right covers
    the tenant."""
    identity, directory, _ = ctx(request)
    authz = request.app.state.authz
    header = request.scope["state"]["ctx"].project
    tenant_id = identity.tenant_id
    if header:
        project = directory.find(Project, header) if valid_id(header) else None
        if project is None:
            return Visible(tenant_id, ())
        tenant_id = project.tenant_id
        allowed = authz.allows(identity, action, Resource(tenant_id, header))
        return Visible(tenant_id, (header,) if allowed else ())
    if authz.allows(identity, action, Resource(tenant_id=tenant_id)):
        return Visible(tenant_id, None)
    candidates = {b.project_id for b in identity.bindings if b.project_id}
    candidates |= set(getattr(identity, "projects", None) or ())
    return Visible(tenant_id, tuple(sorted(
        p for p in candidates if authz.allows(identity, action, Resource(tenant_id, p)))))


def audited(request: Request, action: str,
            detail: Callable[[Any], dict[str, Any]] = lambda row: {}
            ) -> Callable[[Session, Any], None]:
    """A hook for the stores: the act's audit record joins the change's transaction."""
    _, directory, act = ctx(request)

    def add(s: Session, row: Any) -> None:
        s.flush()
        directory.audit.append([act.record(action, row.id, row.tenant_id, detail=detail(row))],
                               session=s)

    return add
