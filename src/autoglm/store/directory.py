"""Tenants, projects, principals and role bindings: reads and writes, each write audited.

Every change and its audit record (the tamper-evident chain, ``autoglm.audit``) are
committed in one transaction, so an acknowledged admin act always has its record. Listing
is keyset-paginated by id.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any, TypeVar

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from autoglm.audit import AuditLog, Record
from autoglm.errors import InvalidRequestError, NotFoundError
from autoglm.store.db import Database
from autoglm.store.models import (
    ROLES,
    ApiKey,
    AuditRecord,
    Base,
    Principal,
    Project,
    RateLimit,
    RoleBinding,
    Tenant,
    new_id,
    utcnow,
    valid_id,
)
from autoglm.timefmt import stamp

M = TypeVar("M", bound=Base)


@dataclass(frozen=True)
class Act:
    """Who does an admin act, for the audit record."""

    actor: str
    request_id: str | None
    key_id: str | None = None
    client: str | None = None

    def record(self, action: str, resource: str, tenant: str | None, decision: str = "allow",
               status: int = 200, detail: dict[str, Any] | None = None) -> Record:
        return Record(action=action, decision=decision, status=status, actor=self.actor,
                      key_id=self.key_id, tenant_id=tenant, resource=resource,
                      client_addr=self.client, request_id=self.request_id, detail=detail or {})


def view(row: Base) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for col in row.__table__.columns:
        if col.name == "key_hash":
            continue  # never leaves the store
        value = getattr(row, col.name)
        out[col.name] = stamp(value) if isinstance(value, datetime) else value
    return out


class Directory:
    """``audit``: the one append point; every change commits with its record."""

    def __init__(self, db: Database, audit: AuditLog) -> None:
        self.db = db
        self.audit = audit

    # --- reads --------------------------------------------------------------------------------
    def get(self, model: type[M], id_: str) -> M:
        with self.db.session() as s:
            row = s.get(model, id_)
        if row is None:
            raise NotFoundError(f"{model.__tablename__[:-1]} '{id_}' not found")
        return row

    def find(self, model: type[M], id_: str) -> M | None:
        if not valid_id(id_):
            return None
        with self.db.session() as s:
            return s.get(model, id_)

    def page(self, model: type[M], *, limit: int, after: str | None,
             **where: Any) -> tuple[list[M], bool]:
        with self.db.session() as s:
            q = select(model).order_by(model.id)  # type: ignore[attr-defined]
            for col, value in where.items():
                q = q.where(getattr(model, col) == value)
            if after:
                q = q.where(model.id > after)  # type: ignore[attr-defined]
            rows = list(s.scalars(q.limit(limit + 1)))
        return rows[:limit], len(rows) > limit

    def tenant_of_principal(self, principal_id: str) -> str | None:
        return self.get(Principal, principal_id).tenant_id

    # --- writes (each with its audit event) ------------------------------------------------
    def _commit(self, s: Session, act: Act, action: str, resource: str, tenant: str | None,
                detail: dict[str, Any] | None = None) -> None:
        try:
            s.flush()  # a duplicate name is the caller's 400, found before the record is made
            self.audit.append([act.record(action, resource, tenant, detail=detail)], session=s)
            s.commit()
        except IntegrityError:
            s.rollback()
            raise InvalidRequestError(f"{action}: that already exists (names are unique)") from None

    def create_tenant(self, act: Act, name: str) -> Tenant:
        with self.db.session() as s:
            t = Tenant(id=new_id("ten"), name=name)
            s.add(t)
            self._commit(s, act, "tenant.create", t.id, t.id, {"name": name})
            return t

    @staticmethod
    def _within_grant(s: Session, tenant_id: str, models: list[str]) -> None:
        """A project can only narrow its tenant's grant."""
        tenant = s.get(Tenant, tenant_id)
        outside = sorted(set(models) - set(tenant.granted_models or ()) if tenant else models)
        if outside:
            raise InvalidRequestError(
                f"allowed_models: {', '.join(outside[:5])} not granted to this tenant; a "
                "platform admin grants models with PUT /admin/v1/tenants/{tenant}/models",
                param="allowed_models")

    def grant_models(self, act: Act, tenant_id: str, models: list[str]) -> Tenant:
        """Replace the tenant's grant. Projects keep their lists, but a model no longer
        granted is refused to them at once (the grant bounds every use)."""
        with self.db.session() as s:
            t = s.get(Tenant, tenant_id)
            if t is None:
                raise NotFoundError(f"tenant '{tenant_id}' not found")
            before = list(t.granted_models or [])
            t.granted_models = sorted(set(models))
            self._commit(s, act, "tenant.grant", t.id, t.id,
                         {"granted_models": t.granted_models, "previous": before})
            return t

    def set_limits(self, act: Act, scope: str, scope_id: str, tenant_id: str | None,
                   values: dict[str, int | None]) -> None:
        """Set (or, all null, clear) one key's, project's or tenant's own limits."""
        with self.db.session() as s:
            row = s.get(RateLimit, (scope, scope_id))
            before = ({f: getattr(row, f) for f in values} if row is not None else {})
            if all(v is None for v in values.values()):
                if row is not None:
                    s.delete(row)
            else:
                if row is None:
                    row = RateLimit(scope=scope, scope_id=scope_id)
                    s.add(row)
                for name, value in values.items():
                    setattr(row, name, value)
                row.updated_at = utcnow()
            self._commit(s, act, "limit.set", f"{scope}:{scope_id}", tenant_id,
                         {"limits": values, "previous": before})

    def create_project(self, act: Act, tenant_id: str, name: str, models: list[str]) -> Project:
        with self.db.session() as s:
            self._within_grant(s, tenant_id, models)
            p = Project(id=new_id("prj"), tenant_id=tenant_id, name=name, allowed_models=models)
            s.add(p)
            self._commit(s, act, "project.create", p.id, tenant_id,
                         {"name": name, "allowed_models": models})
            return p

    def update_project(self, act: Act, project_id: str, models: list[str]) -> Project:
        with self.db.session() as s:
            p = s.get(Project, project_id)
            if p is None:
                raise NotFoundError(f"project '{project_id}' not found")
            self._within_grant(s, p.tenant_id, models)
            p.allowed_models = models
            self._commit(s, act, "project.update", p.id, p.tenant_id, {"allowed_models": models})
            return p

    def create_principal(self, act: Act, tenant_id: str, name: str, kind: str) -> Principal:
        with self.db.session() as s:
            p = Principal(id=new_id("prn"), tenant_id=tenant_id, name=name, kind=kind)
            s.add(p)
            self._commit(s, act, "principal.create", p.id, tenant_id, {"name": name, "kind": kind})
            return p

    def bind(self, act: Act, principal_id: str, role: str, project_id: str | None) -> RoleBinding:
        if role not in ROLES or role == "platform_admin":
            raise InvalidRequestError("role must be one of tenant_admin, member, guest",
                                      param="role")
        with self.db.session() as s:
            prn = s.get(Principal, principal_id)
            if prn is None or prn.tenant_id is None:
                raise NotFoundError(f"principal '{principal_id}' not found")
            if project_id is not None:
                proj = s.get(Project, project_id)
                if proj is None or proj.tenant_id != prn.tenant_id:  # no cross-tenant binding
                    raise NotFoundError(f"project '{project_id}' not found")
            if role == "tenant_admin":
                project_id = None
            elif project_id is None:
                raise InvalidRequestError(f"a {role} binding needs a project_id",
                                          param="project_id")
            b = RoleBinding(id=new_id("rb"), principal_id=principal_id, role=role,
                            tenant_id=prn.tenant_id, project_id=project_id)
            s.add(b)
            self._commit(s, act, "binding.create", b.id, prn.tenant_id,
                         {"principal": principal_id, "role": role, "project": project_id})
            return b

    def unbind(self, act: Act, binding_id: str) -> RoleBinding:
        with self.db.session() as s:
            b = s.get(RoleBinding, binding_id)
            if b is None:
                raise NotFoundError(f"binding '{binding_id}' not found")
            s.delete(b)
            self._commit(s, act, "binding.delete", b.id, b.tenant_id)
            return b

    def audited(self, act: Act, action: str, tenant: str | None,
                detail: dict[str, Any] | None = None) -> Any:
        """A hook for the key service: the audit record joins the key change's transaction."""

        def add(s: Session, key: ApiKey) -> None:
            s.flush()
            self.audit.append([act.record(action, key.id, tenant, detail=detail)], session=s)

        return add

    def record_denial(self, act: Act, action: str, resource: str, tenant: str | None,
                      status: int) -> None:
        self._record(act, action, resource, tenant, "deny", status, {})

    def record_act(self, act: Act, action: str, resource: str, tenant: str | None,
                   detail: dict[str, Any]) -> None:
        """An allowed act whose change is not in this store (e.g. an engine instance)."""
        self._record(act, action, resource, tenant, "allow", 200, detail)

    def _record(self, act: Act, action: str, resource: str, tenant: str | None, decision: str,
                status: int, detail: dict[str, Any]) -> None:
        """Durable before the answer is sent (admin acts and refusals)."""
        self.audit.append([act.record(action, resource, tenant, decision, status, detail)])

    def events(self, *, tenant_id: str | None = None, limit: int = 100) -> list[AuditRecord]:
        with self.db.session() as s:
            q = select(AuditRecord).order_by(AuditRecord.seq.desc()).limit(limit)
            if tenant_id is not None:
                q = q.where(AuditRecord.tenant_id == tenant_id)
            return list(s.scalars(q))
