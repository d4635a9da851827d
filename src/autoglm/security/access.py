"""The authorization stage: identity x action x resource -> allow, or the right refusal.

Handlers name the action and the resource; ``Authorizer.require`` decides through the
policy (``security/policy.py``), so no route makes its own role check. Refusals never
leak existence: a model the caller may not use is the same 404 as a model that does not
exist, and an object in another tenant is a 404, not a 403.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

from sqlalchemy import select

from autoglm.errors import ModelNotFoundError, PermissionDeniedError
from autoglm.security.policy import PolicyStore, Resource, authorize
from autoglm.store.db import Database
from autoglm.store.models import Project, Tenant, valid_id

PROJECT_HEADER = "openai-project"
LOOKUP_CACHE = 10_000  # projects and tenants remembered (the oldest goes first)

Lookup = tuple[str, tuple[str, ...]] | None  # a project: (tenant, models); a tenant: (id, grant)


class Authorizer:
    def __init__(self, policy: PolicyStore, db: Database | None, cache_ttl_s: float = 2.0) -> None:
        self.policy = policy
        self.db = db
        self.cache_ttl_s = cache_ttl_s
        self._cache: dict[tuple[str, str], tuple[Lookup, float]] = {}

    def allows(self, identity: Any, action: str, resource: Resource) -> bool:
        return authorize(self.policy.current(), identity, action, resource)

    def require(self, identity: Any, action: str, resource: Resource) -> None:
        if not self.allows(identity, action, resource):
            raise PermissionDeniedError(f"not allowed: {action}")

    # --- inference ----------------------------------------------------------------------
    def forget(self, kind: str, id_: str) -> None:
        """A grant or a project's models changed here: the next request reads them again."""
        self._cache.pop((kind, id_), None)

    def _query(self, kind: str, id_: str) -> Lookup:
        if self.db is None:
            return None
        with self.db.session() as s:
            if kind == "project":
                row = s.execute(select(Project.tenant_id, Project.allowed_models)
                                .where(Project.id == id_)).first()
            else:
                row = s.execute(select(Tenant.id, Tenant.granted_models)
                                .where(Tenant.id == id_)).first()
        return None if row is None else (row[0], tuple(row[1] or ()))

    async def _lookup(self, kind: str, id_: str) -> Lookup:
        """A project's (tenant, models) or a tenant's (id, grant), cached ``cache_ttl_s``;
        the database is asked on a worker thread, never on the event loop."""
        key = (kind, id_)
        entry = self._cache.get(key)
        if entry is not None and time.monotonic() - entry[1] <= self.cache_ttl_s:
            return entry[0]
        value = await asyncio.to_thread(self._query, kind, id_)
        cache = self._cache  # bounded: the oldest entry goes first, never all of them
        cache.pop(key, None)
        while len(cache) >= LOOKUP_CACHE:
            del cache[next(iter(cache))]
        cache[key] = (value, time.monotonic())
        return value

    def chosen_project(self, identity: Any, header: str | None) -> str | None:
        """The project a request is about: the one it names, else the caller's only one."""
        if header:
            return header
        projects = getattr(identity, "projects", None)
        if projects and len(projects) == 1:
            return projects[0]
        bound = {b.project_id for b in getattr(identity, "bindings", ()) if b.project_id}
        return next(iter(bound)) if len(bound) == 1 else None

    async def inference_resource(self, identity: Any, model: str, header: str | None) -> Resource:
        """What a model use is about: the chosen project (and so its tenant), else the
        caller's own tenant; each bounded by the tenant's grant. Platform principals
        without a project are bounded by nothing but the policy."""
        project_id = self.chosen_project(identity, header)
        if project_id is not None and not valid_id(project_id):
            raise _no_model(model)  # a malformed project id names nothing: no query
        allowed = None
        if project_id is None:
            tenant_id = getattr(identity, "tenant_id", None)
        else:
            found = await self._lookup("project", project_id)
            if found is None:  # the same answer as "not yours": no oracle on project ids
                raise _no_model(model)
            tenant_id, allowed = found
        granted: tuple[str, ...] | None = None
        if tenant_id is not None:
            tenant = await self._lookup("tenant", tenant_id)
            granted = tenant[1] if tenant is not None else ()
        return Resource(tenant_id=tenant_id, project_id=project_id, model=model,
                        allowed_models=allowed, granted_models=granted)

    async def require_model(self, identity: Any, model: str, header: str | None,
                            action: str = "inference") -> None:
        """``inference`` (use the model) or ``model.list`` (see it listed)."""
        resource = await self.inference_resource(identity, model, header)
        if not self.allows(identity, action, resource):
            raise _no_model(model)


def _no_model(model: str) -> ModelNotFoundError:
    return ModelNotFoundError(
        f"The model '{model}' does not exist or you do not have access to it.", param="model")
