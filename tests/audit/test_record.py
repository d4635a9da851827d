"""Records: what is stored is what was sealed, whatever the caller passed; the keys."""

from __future__ import annotations

import os
import threading
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

import pytest

from autoglm.audit import AuditLog, AuditPaths, Record, verify
from autoglm.audit.keys import load_hmac_key
from autoglm.audit.record import SEED, body, normalise, seal
from autoglm.errors import AuditError, ConfigError
from autoglm.store.db import MIGRATIONS, Database
from autoglm.store.models import AuditRecord


def test_the_seed_is_the_one_the_migration_writes() -> None:
    source = (MIGRATIONS / "versions" / "0004_audit_chain.py").read_text()
    assert f'SEED_HEX = "{SEED.hex()}"' in source


def test_the_canonical_form_is_fixed_bytes() -> None:
    """Pinned: changing how records are serialised would break every stored chain."""
    r = Record(action="chat.completions", status=200, actor="prn_a", latency_ms=12,
               detail={"b": 1, "a": [1.5, "x"]},
               ts=datetime(2026, 1, 2, 3, 4, 5, 678_901, tzinfo=UTC))
    assert body(normalise(r)) == (
        b'{"action":"chat.completions","actor":"prn_a","client_addr":null,'
        b'"client_request_id":null,"completion_tokens":null,"consent_id":null,"count":1,'
        b'"decision":"allow","detail":{"a":[1.5,"x"],"b":1},"key_id":null,"latency_ms":12.0,'
        b'"model":null,"project_id":null,"prompt_tokens":null,"purpose":null,'
        b'"request_id":null,"resource":"","status":200,"tenant_id":null,'
        b'"ts":"2026-01-02T03:04:05.678+00:00"}')
    key = b"k" * 32
    assert seal(key, SEED, 1, body(normalise(r))) != seal(key, SEED, 2, body(normalise(r)))


def test_awkward_values_are_stored_as_sealed(db: Database, paths: AuditPaths) -> None:
    """NUL, over-long and non-UTF-8 text, ints for floats, NaN in detail, a local time with
    microseconds: stored as normalised, and the chain verifies from the stored rows."""
    odd = Record(action="chat.completions", status=200, resource="/v1/" + "x" * 400,
                 actor="prn\x00evil", client_addr="2001:db8::1", model="模型-😀",
                 purpose="bad \ud800 surrogate", latency_ms=7, prompt_tokens=3.0,
                 detail={"nan": float("nan"), "big": 1e300, "nested": {"z": 1, "a": (1, 2)}},
                 ts=datetime(2026, 5, 1, 8, 0, 0, 123_456,
                             tzinfo=timezone(timedelta(hours=8))))
    log = AuditLog(db, paths)
    log.append([odd])
    log.submit(Record(action="x", detail={"when": "later"}))
    log.close()
    assert verify(db, paths).intact
    with db.session() as s:
        row = s.get(AuditRecord, 1)
    assert len(row.resource) == 256 and row.actor == "prn\ufffdevil"
    assert row.model == "模型-😀" and row.purpose is None  # sealed, with the address
    opened = [{"actor": row.actor, "ts": row.ts, "personal": row.personal}]
    reader = AuditLog(db, paths)
    try:
        reader.vault.open_rows(opened)
    finally:
        reader.close()  # no writer thread left behind to log about a dropped database
    assert opened[0]["purpose"] == "bad ? surrogate" and opened[0]["client_addr"] == "2001:db8::1"
    assert row.latency_ms == 7.0 and row.prompt_tokens == 3
    assert row.detail == {"nan": None, "big": 1e300, "nested": {"a": [1, 2], "z": 1}}
    assert row.ts.replace(tzinfo=UTC).hour == 0 and row.ts.microsecond == 123_000


@pytest.mark.parametrize("fields", [
    {"decision": "maybe"}, {"action": ""}, {"count": 0}, {"status": "200"},
    {"detail": {"x": object()}}, {"detail": {"x": "y" * 5000}}, {"latency_ms": "fast"},
])
def test_records_that_cannot_be_stored_are_refused_by_append(
        db: Database, paths: AuditPaths, fields: dict) -> None:
    log = AuditLog(db, paths)
    with pytest.raises(AuditError):
        log.append([Record(**{"action": "a", **fields})])
    log.close()


def test_a_bad_queued_record_is_kept_as_a_note_not_dropped(db: Database,
                                                           paths: AuditPaths) -> None:
    log = AuditLog(db, paths)
    log.submit(Record(action="chat.completions", request_id="r-1", detail={"x": object()}))
    log.close()
    with db.session() as s:
        row = s.get(AuditRecord, 1)
    assert row.action == "chat.completions" and row.request_id == "r-1"
    assert "plain JSON" in row.detail["audit_error"]
    assert verify(db, paths).intact


def test_the_key_file_is_0600_and_racing_creators_share_one(tmp_path: Path) -> None:
    path = tmp_path / "secrets" / "audit_hmac_key"
    keys: list[bytes] = []
    start = threading.Barrier(8)

    def load() -> None:
        start.wait()
        keys.append(load_hmac_key(path, create=True))

    threads = [threading.Thread(target=load) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(set(keys)) == 1 and len(keys[0]) == 32
    assert path.stat().st_mode & 0o777 == 0o600
    assert not [p for p in path.parent.iterdir() if p.name.endswith(".tmp")]


def test_a_key_others_can_read_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "audit_hmac_key"
    load_hmac_key(path, create=True)
    os.chmod(path, 0o644)
    with pytest.raises(ConfigError, match="chmod 600"):
        load_hmac_key(path, create=False)


def test_verify_never_makes_a_key(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="no audit key"):
        load_hmac_key(tmp_path / "audit_hmac_key", create=False)
    assert not (tmp_path / "audit_hmac_key").exists()


def test_the_migration_goes_down_and_up_again(db: Database) -> None:
    from alembic import command
    from alembic.config import Config
    from sqlalchemy import inspect, text

    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    with db.engine.begin() as conn:
        cfg.attributes["connection"] = conn
        command.downgrade(cfg, "0003")
    assert not {"audit_log", "audit_head"} & set(inspect(db.engine).get_table_names())
    db.upgrade()
    with db.engine.connect() as conn:
        assert conn.execute(text("SELECT seq, hash FROM audit_head")).all() == [(0, SEED.hex())]
