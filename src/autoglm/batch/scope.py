"""Whose a file or a batch is, and which of them a caller's lists show.

Every file and batch belongs to a tenant and, usually, a project (the one its creator
named or worked in); platform principals' own objects have neither. Reads by id are
checked against the policy per object (``api/tenancy.py``); lists are filtered in SQL by
``Visible``: the caller's tenant, and the projects in it the caller may read in (all of
them when a tenant-wide right covers the tenant).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from sqlalchemy import Select


@dataclass(frozen=True)
class Scope:
    """Where a new object goes, and who made it."""

    tenant_id: str | None
    project_id: str | None
    principal_id: str


@dataclass(frozen=True)
class Visible:
    """The objects a caller's lists may show."""

    tenant_id: str | None
    projects: tuple[str, ...] | None  # None: every object of the tenant

    def apply(self, q: Select[Any], model: Any) -> Select[Any]:
        tenant = model.tenant_id
        q = q.where(tenant.is_(None) if self.tenant_id is None else tenant == self.tenant_id)
        if self.projects is not None:
            q = q.where(model.project_id.in_(self.projects))
        return q
