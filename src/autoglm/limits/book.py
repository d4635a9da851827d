"""``LimitBook``: the limits of each key, project and tenant.

Defaults per scope come from the settings file (``rate_limits``); an admin sets the
limits of one key, project or tenant through ``PUT /admin/v1/limits/{scope}/{id}``
(stored in ``rate_limits``, audited), which replace the scope's default field by field:
a field left null keeps the default, and ``0`` means unlimited. The book is read on every
request, so it lives in memory: reloaded from the database every ``reload_s`` (other
processes' changes) and at once in the process that made a change.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Mapping
from dataclasses import dataclass, fields
from typing import Any, Literal

from sqlalchemy import select
from sqlalchemy.exc import OperationalError, ProgrammingError

from autoglm.store.db import Database
from autoglm.store.models import RateLimit

log = logging.getLogger("autoglm.limits")
Scope = Literal["key", "project", "tenant"]
SCOPES: tuple[Scope, ...] = ("key", "project", "tenant")
FIELDS = ("requests_per_minute", "tokens_per_minute", "tokens_per_day")


@dataclass(frozen=True)
class Limits:
    """One scope's limits; None: unlimited. ``tokens_per_day`` is for tenants."""

    requests_per_minute: int | None = None
    tokens_per_minute: int | None = None
    tokens_per_day: int | None = None

    @property
    def any(self) -> bool:
        return any(getattr(self, f) for f in FIELDS)

    def over(self, override: Mapping[str, int | None]) -> Limits:
        """These limits with ``override``'s non-null fields on top (0: unlimited)."""
        values = {f: getattr(self, f) for f in FIELDS}
        for f in FIELDS:
            v = override.get(f)
            if v is not None:
                values[f] = v or None
        return Limits(**values)

    def to_dict(self) -> dict[str, int | None]:
        return {f.name: getattr(self, f.name) for f in fields(self)}


class LimitBook:
    def __init__(self, defaults: Mapping[str, Mapping[str, Any]], db: Database | None = None
                 ) -> None:
        self.defaults = {s: Limits().over(defaults.get(s, {})) for s in SCOPES}
        self._db = db
        self._lock = threading.Lock()
        self._overrides: dict[tuple[str, str], dict[str, int | None]] = {}
        self._defaults_active = any(lim.any for lim in self.defaults.values())
        self.version = 0  # moves with every change: what callers cached from the book is old

    def of(self, scope: str, ident: str | None) -> Limits | None:
        """The effective limits of one key/project/tenant, or None when it has none."""
        if not ident:
            return None
        base = self.defaults[scope]
        over = self._overrides.get((scope, ident))
        limits = base.over(over) if over else base
        return limits if limits.any else None

    def override_of(self, scope: str, ident: str) -> dict[str, int | None]:
        return dict(self._overrides.get((scope, ident), {}))

    @property
    def active(self) -> bool:
        """Whether any limit exists at all (no limits: the stage costs nothing)."""
        return self._defaults_active or bool(self._overrides)

    def reload(self) -> None:
        """Read the overrides from the database (blocking: call it off the event loop)."""
        if self._db is None:
            return
        t = RateLimit.__table__
        try:
            with self._db.engine.connect() as conn:
                rows = conn.execute(select(t.c.scope, t.c.scope_id, *(t.c[f] for f in FIELDS)))
                fresh = {(r[0], r[1]): {f: r[2 + i] for i, f in enumerate(FIELDS)}
                         for r in rows}
        except (OperationalError, ProgrammingError) as exc:  # keep the limits we have
            log.warning("rate limits not reloaded", extra={"reason": str(exc.orig)[:200]})
            return
        with self._lock:
            if fresh != self._overrides:
                self._overrides = fresh
                self.version += 1

    def put(self, scope: str, ident: str, values: Mapping[str, int | None]) -> None:
        """Record a change made in this process (it is in the database already)."""
        with self._lock:
            fresh = dict(self._overrides)
            if any(v is not None for v in values.values()):
                fresh[(scope, ident)] = {f: values.get(f) for f in FIELDS}
            else:
                fresh.pop((scope, ident), None)
            self._overrides = fresh
            self.version += 1
