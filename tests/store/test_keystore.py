import time
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import inspect, select

from autoglm.errors import NotFoundError
from autoglm.security.keystore import KeyService
from autoglm.store.db import Database
from autoglm.store.models import ApiKey, Principal, Project, RoleBinding, Tenant

PEPPER = b"p" * 32


class Clock:
    def __init__(self) -> None:
        self.now = datetime(2026, 1, 1, tzinfo=UTC)

    def __call__(self) -> datetime:
        return self.now


def seed(db: Database) -> tuple[str, str, str]:
    with db.session() as s, s.begin():
        t = Tenant(name="bank")
        s.add(t)
        s.flush()
        p = Project(tenant_id=t.id, name="risk", allowed_models=["m1"])
        who = Principal(tenant_id=t.id, name="alice")
        s.add_all([p, who])
        s.flush()
        s.add(RoleBinding(principal_id=who.id, role="member", tenant_id=t.id, project_id=p.id))
        return t.id, p.id, who.id


def test_migrations_create_the_schema_and_are_idempotent(db: Database) -> None:
    tables = set(inspect(db.engine).get_table_names())
    assert {"tenants", "projects", "principals", "role_bindings", "api_keys", "audit_events",
            "alembic_version"} <= tables
    db.upgrade()  # second run changes nothing and does not fail


def test_key_is_stored_only_as_a_hash_and_resolves_to_its_principal(db: Database) -> None:
    tenant, project, alice = seed(db)
    svc = KeyService(db, PEPPER)
    secret, record = svc.create(alice, name="ci", projects=[project], models=["m1"],
                                actions=["inference"])
    with db.session() as s:
        stored = s.scalars(select(ApiKey)).one()
    assert secret not in (stored.key_hash, stored.display) and stored.display.endswith("…")
    ident = svc.lookup(secret)
    assert ident is not None and ident.principal_id == alice and ident.tenant_id == tenant
    assert [(b.role, b.project_id) for b in ident.bindings] == [("member", project)]
    assert ident.projects == (project,) and ident.models == ("m1",)
    assert svc.cached(secret) == (True, ident)
    assert svc.lookup("agk_wrong") is None
    assert svc.cached("agk_wrong") == (True, None)


def test_revocation_is_immediate_here_and_within_the_ttl_on_another_replica(db) -> None:
    _, _, alice = seed(db)
    here = KeyService(db, PEPPER, cache_ttl_s=0.3)
    there = KeyService(Database(db.url), PEPPER, cache_ttl_s=0.3)  # a second server process
    secret, record = here.create(alice)
    assert here.lookup(secret) and there.lookup(secret)
    here.revoke(record.id)
    assert here.cached(secret) == (False, None) and here.lookup(secret) is None
    assert there.cached(secret)[1] is not None  # still cached for a moment
    time.sleep(0.35)
    assert there.cached(secret) == (False, None)
    assert there.lookup(secret) is None
    there.db.close()


def test_rotation_keeps_the_old_key_for_the_grace_window(db: Database) -> None:
    _, _, alice = seed(db)
    clock = Clock()
    svc = KeyService(db, PEPPER, clock=clock)
    old, rec = svc.create(alice, models=["m1"])
    new, new_rec = svc.rotate(rec.id, grace=timedelta(hours=1))
    assert new != old and new_rec.models == ["m1"]
    clock.now += timedelta(minutes=59)
    assert svc.lookup(old) is not None and svc.lookup(new) is not None
    clock.now += timedelta(minutes=2)
    assert svc.lookup(old) is None and svc.cached(old)[1] is None
    assert svc.lookup(new) is not None


def test_forced_rotation_ends_the_old_key_now(db: Database) -> None:
    _, _, alice = seed(db)
    svc = KeyService(db, PEPPER, clock=Clock())
    old, rec = svc.create(alice)
    assert svc.lookup(old) is not None
    new, _ = svc.rotate(rec.id, grace=timedelta(0))
    assert svc.lookup(old) is None and svc.lookup(new) is not None
    with pytest.raises(NotFoundError):
        svc.rotate(rec.id)  # a revoked key cannot be rotated again


def test_expired_key_and_disabled_principal_fail(db: Database) -> None:
    _, _, alice = seed(db)
    clock = Clock()
    svc = KeyService(db, PEPPER, clock=clock)
    secret, _ = svc.create(alice, expires_at=clock.now + timedelta(days=1))
    assert svc.lookup(secret) is not None
    clock.now += timedelta(days=1)
    assert svc.lookup(secret) is None
    other, _ = svc.create(alice)
    with db.session() as s, s.begin():
        s.get(Principal, alice).disabled = True
    assert svc.lookup(other) is None


def test_unknown_ids_are_not_found(db: Database) -> None:
    svc = KeyService(db, PEPPER)
    with pytest.raises(NotFoundError):
        svc.create("prn_missing")
    with pytest.raises(NotFoundError):
        svc.revoke("key_missing")


async def test_a_lookup_in_flight_during_revocation_never_caches_the_key(db: Database) -> None:
    """The race found by probing: a lookup that read the key before `revoke` committed must
    not put it back in the cache as valid once the revocation is done."""
    import asyncio
    import threading

    _, _, alice = seed(db)
    svc = KeyService(db, PEPPER)
    secret, record = svc.create(alice)
    read, release = threading.Event(), threading.Event()
    real_load = svc._load

    def slow_load(digest: str):
        found = real_load(digest)  # reads the key while it is still valid
        read.set()
        release.wait(5)
        return found

    svc._load = slow_load  # type: ignore[method-assign]
    in_flight = asyncio.create_task(svc.resolve(secret))
    await asyncio.to_thread(read.wait, 5)
    svc.revoke(record.id)
    release.set()
    assert await in_flight is not None  # it began before the revocation: it may pass
    svc._load = real_load  # type: ignore[method-assign]
    assert svc.cached(secret) == (False, None)  # ... but it was not cached
    assert await svc.resolve(secret) is None  # the next request is refused


async def test_concurrent_lookups_of_one_key_share_one_query(db: Database) -> None:
    import asyncio

    _, _, alice = seed(db)
    svc = KeyService(db, PEPPER)
    secret, _ = svc.create(alice)
    calls = []
    real_load = svc._load

    def counted(digest: str):
        calls.append(digest)
        return real_load(digest)

    svc._load = counted  # type: ignore[method-assign]
    found = await asyncio.gather(*(svc.resolve(secret) for _ in range(16)))
    assert all(f is not None and f.principal_id == alice for f in found)
    assert len(calls) == 1


def test_migration_0002_removes_duplicate_bindings_and_forbids_new_ones(tmp_path) -> None:
    """A database made before 0002 may hold the same NULL-scoped binding several times."""
    from alembic import command
    from alembic.config import Config
    from sqlalchemy import text
    from sqlalchemy.exc import IntegrityError

    from autoglm.store.db import MIGRATIONS

    database = Database(f"sqlite:///{tmp_path / 'old.db'}")
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    with database.engine.begin() as conn:
        cfg.attributes["connection"] = conn
        command.upgrade(cfg, "0001")
    tenant, alice = "ten_old", "prn_alice"
    with database.engine.begin() as conn:  # rows as the 0001 schema had them
        conn.execute(text("INSERT INTO tenants (id, name, created_at) VALUES "
                          "(:t, 'old', CURRENT_TIMESTAMP)"), {"t": tenant})
        conn.execute(text("INSERT INTO principals (id, tenant_id, name, kind, disabled, "
                          "created_at) VALUES (:p, :t, 'alice', 'user', false, "
                          "CURRENT_TIMESTAMP)"), {"p": alice, "t": tenant})
        for n in range(3):
            conn.execute(text(
                "INSERT INTO role_bindings (id, principal_id, role, tenant_id, project_id, "
                "created_at) VALUES (:id, :p, 'tenant_admin', :t, NULL, :c)"),
                {"id": f"rb_dup{n}", "p": alice, "t": tenant, "c": datetime(2026, 1, 1 + n)})
    database.upgrade()
    with database.session() as s:
        roles = s.scalars(select(RoleBinding).where(RoleBinding.principal_id == alice,
                                                    RoleBinding.role == "tenant_admin")).all()
    assert [r.id for r in roles] == ["rb_dup0"]  # the oldest is kept
    with pytest.raises(IntegrityError), database.session() as s, s.begin():
        s.add(RoleBinding(principal_id=alice, role="tenant_admin", tenant_id=tenant))
    database.close()


def test_a_key_is_rotated_once_and_never_after_it_expired(db: Database) -> None:
    from autoglm.errors import InvalidRequestError

    _, _, alice = seed(db)
    clock = Clock()
    svc = KeyService(db, PEPPER, clock=clock)
    old, rec = svc.create(alice, expires_at=clock.now + timedelta(hours=2))
    new, new_rec = svc.rotate(rec.id, grace=timedelta(hours=1))
    with pytest.raises(InvalidRequestError, match="already rotated"):
        svc.rotate(rec.id)  # a second successor would leave three working keys
    clock.now += timedelta(hours=3)  # the successor inherited the expiry: it is over too
    with pytest.raises(InvalidRequestError, match="expired"):
        svc.rotate(new_rec.id)
    assert svc.lookup(old) is None and svc.lookup(new) is None
