"""The identity snapshot: exported at the centre, applied at an edge (inserts, updates such
as a revocation, deletes), the edge's own platform principals left alone."""

from __future__ import annotations

from datetime import UTC, datetime

import orjson
import pytest
from sqlalchemy import delete, select, update

from autoglm.edge import snapshot
from autoglm.errors import InvalidRequestError
from autoglm.security.auth import ensure_platform_admin
from autoglm.store.db import Database
from autoglm.store.models import ApiKey, Principal, Project, RateLimit, RoleBinding, Tenant


def seed(db: Database) -> dict[str, str]:
    admin = ensure_platform_admin(db)
    with db.session() as s, s.begin():
        t = Tenant(name="bank", granted_models=["m"])
        s.add(t)
        s.flush()
        p = Project(tenant_id=t.id, name="main", allowed_models=["m"])
        u = Principal(tenant_id=t.id, name="alice")
        s.add_all([p, u])
        s.flush()
        s.add(RoleBinding(principal_id=u.id, role="member", tenant_id=t.id, project_id=p.id))
        k = ApiKey(principal_id=u.id, key_hash="a" * 64, display="agk_a…", name="k",
                   expires_at=datetime(2030, 1, 1, tzinfo=UTC))
        s.add_all([k, ApiKey(principal_id=admin, key_hash="c" * 64, display="agk_c…")])
        s.add(RateLimit(scope="key", scope_id="key_x", requests_per_minute=5))
        s.flush()
        return {"tenant": t.id, "project": p.id, "principal": u.id, "key": k.id}


def rows(db: Database, model: type) -> list[tuple]:
    """The rows that come from the centre (not the platform administrator's binding)."""
    with db.session() as s:
        return sorted(tuple(getattr(r, c.name) for c in model.__table__.columns
                            if c.name not in ("created_at", "updated_at"))
                      for r in s.scalars(select(model))
                      if getattr(r, "role", None) != "platform_admin")


def test_an_edge_becomes_equal_to_its_centre_and_follows_its_changes(
        edge_db: Database, centre_db: Database) -> None:
    ids = seed(centre_db)
    own = ensure_platform_admin(edge_db)
    with edge_db.session() as s, s.begin():  # the edge's own administrator key
        s.add(ApiKey(principal_id=own, key_hash="e" * 64, display="agk_e…"))
    doc = orjson.loads(orjson.dumps(snapshot.export(centre_db)))  # over the wire
    assert doc["version"] == 1
    assert all(r["tenant_id"] for r in doc["tables"]["principals"])  # no platform principal
    assert {r["key_hash"] for r in doc["tables"]["api_keys"]} == {"a" * 64}
    first = snapshot.apply(edge_db, doc)
    assert first.inserted == 6 and first.updated == first.deleted == 0
    for model in (Tenant, Project, RoleBinding, RateLimit):
        assert rows(edge_db, model) == rows(centre_db, model)
    with edge_db.session() as s:
        keys = {k.key_hash: k for k in s.scalars(select(ApiKey))}
    assert set(keys) == {"a" * 64, "e" * 64}  # the centre's tenant key and the edge's own
    assert keys["a" * 64].expires_at.replace(tzinfo=UTC) == datetime(2030, 1, 1, tzinfo=UTC)
    assert snapshot.apply(edge_db, doc).changed is False  # nothing new: nothing written

    # At the centre: the key revoked, a project added, the limit removed.
    with centre_db.session() as s, s.begin():
        s.execute(update(ApiKey).where(ApiKey.id == ids["key"])
                  .values(revoked_at=datetime(2026, 11, 26, tzinfo=UTC)))
        s.add(Project(tenant_id=ids["tenant"], name="second", allowed_models=[]))
        s.execute(delete(RateLimit))
    second = snapshot.apply(edge_db, snapshot.export(centre_db))
    assert (second.inserted, second.updated, second.deleted) == (1, 1, 1)
    with edge_db.session() as s:
        assert s.get(ApiKey, ids["key"]).revoked_at is not None
        assert s.scalar(select(RateLimit)) is None

    # The tenant deleted at the centre: gone at the edge with all it held, but for the
    # edge's own platform principal and key.
    with centre_db.session() as s, s.begin():
        s.execute(delete(ApiKey).where(ApiKey.principal_id == ids["principal"]))
        s.execute(delete(RoleBinding))
        s.execute(delete(Principal).where(Principal.tenant_id.is_not(None)))
        s.execute(delete(Project))
        s.execute(delete(Tenant))
    snapshot.apply(edge_db, snapshot.export(centre_db))
    assert rows(edge_db, Tenant) == [] and rows(edge_db, Project) == []
    with edge_db.session() as s:
        assert [k.key_hash for k in s.scalars(select(ApiKey))] == ["e" * 64]
        assert s.get(Principal, own) is not None


def test_a_malformed_snapshot_changes_nothing(edge_db: Database, centre_db: Database) -> None:
    seed(centre_db)
    doc = snapshot.export(centre_db)
    for bad, message in (({"version": 2}, "version 1"),
                         ({**doc, "tables": []}, "no tables"),
                         ({**doc, "tables": {**doc["tables"], "tenants": [{"id": "x"}]}},
                          "snapshot table tenants, row 0")):
        with pytest.raises(InvalidRequestError, match=message):
            snapshot.apply(edge_db, bad)
    assert rows(edge_db, Tenant) == []
