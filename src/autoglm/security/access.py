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
from autoglm.store.models import Project, valid_id

PROJECT_HEADER = "openai-project"
PROJECT_CACHE = 10_000  # what the openai SDK sends for `project=`


class Authorizer:
    def __init__(self, policy: PolicyStore, db: Database | None, cache_ttl_s: float = 2.0) -> None:
        self.policy = policy
        self.db = db
        self.cache_ttl_s = cache_ttl_s
        self._projects: dict[str, tuple[tuple[str, tuple[str, ...]] | None, float]] = {}

    def allows(self, identity: Any, action: str, resource: Resource) -> bool:
        return authorize(self.policy.current(), identity, action, resource)

    def require(self, identity: Any, action: str, resource: Resource) -> None:
        if not self.allows(identity, action, resource):
            raise PermissionDeniedError(f"not allowed: {action}")

    # --- inference ----------------------------------------------------------------------
    def _project(self, project_id: str) -> tuple[str, tuple[str, ...]] | None:
        """(tenant id, allowed models) of a project, cached for ``cache_ttl_s``."""
        entry = self._projects.get(project_id)
        if entry is not None and time.monotonic() - entry[1] <= self.cache_ttl_s:
            return entry[0]
        value = None
        if self.db is not None:
            with self.db.session() as s:
                row = s.execute(select(Project.tenant_id, Project.allowed_models)
                                .where(Project.id == project_id)).first()
            if row is not None:
                value = (row[0], tuple(row[1] or ()))
        projects = self._projects  # bounded: the oldest entry goes first, never all of them
        projects.pop(project_id, None)
        while len(projects) >= PROJECT_CACHE:
            del projects[next(iter(projects))]
        projects[project_id] = (value, time.monotonic())
        return value

    def _chosen_project(self, identity: Any, header: str | None) -> str | None:
        if header:
            return header
        projects = getattr(identity, "projects", None)
        if projects and len(projects) == 1:
            return projects[0]
        bound = {b.project_id for b in getattr(identity, "bindings", ()) if b.project_id}
        return next(iter(bound)) if len(bound) == 1 else None

    async def inference_resource(self, identity: Any, model: str, header: str | None) -> Resource:
        project_id = self._chosen_project(identity, header)
        if project_id is not None and not valid_id(project_id):
            raise ModelNotFoundError(  # a malformed project id names nothing: no query
                f"The model '{model}' does not exist or you do not have access to it.",
                param="model")
        if project_id is None:
            return Resource(tenant_id=getattr(identity, "tenant_id", None), model=model)
        info = self._projects.get(project_id)
        if info is None or time.monotonic() - info[1] > self.cache_ttl_s:
            found = await asyncio.to_thread(self._project, project_id)
        else:
            found = info[0]
        if found is None:  # the same answer as "not yours": no oracle on project ids
            raise ModelNotFoundError(
                f"The model '{model}' does not exist or you do not have access to it.",
                param="model")
        tenant_id, allowed = found
        return Resource(tenant_id=tenant_id, project_id=project_id, model=model,
                        allowed_models=allowed)

    async def require_model(self, identity: Any, model: str, header: str | None,
                            action: str = "inference") -> None:
        """``inference`` (use the model) or ``model.list`` (see it listed)."""
        resource = await self.inference_resource(identity, model, header)
        if not self.allows(identity, action, resource):
            raise ModelNotFoundError(
                f"The model '{model}' does not exist or you do not have access to it.",
                param="model")
