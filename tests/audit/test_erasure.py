"""Personal fields sealed per data subject, and erasure that keeps the chain verifiable
(issue 11, point 9): after ``autoglm privacy erase`` the subject's client addresses,
purposes and kept texts cannot be read, other subjects' still can, and ``audit verify``
passes."""

from __future__ import annotations

import io
import json
import stat
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import orjson
import pytest
from sqlalchemy import select, update
from typer.testing import CliRunner

from autoglm.audit import AuditLog, AuditPaths, Record, verify
from autoglm.audit.export import export
from autoglm.audit.keys import load_hmac_key
from autoglm.audit.segment import verify_file
from autoglm.cli.main import app
from autoglm.store.db import Database
from autoglm.store.models import AuditRecord, SubjectKey

T = AuditRecord.__table__
ALICE_ADDR, BOB_ADDR, ANON_ADDR = "10.77.1.23", "10.88.4.56", "10.99.7.89"
ALICE_PURPOSE = "loan review for Alice Example"


def rows(db: Database) -> list[dict[str, Any]]:
    with db.engine.connect() as conn:
        return [dict(r._mapping) for r in conn.execute(select(T).order_by(T.c.seq))]


def opened(log: AuditLog, db: Database) -> list[dict[str, Any]]:
    out = rows(db)
    log.vault.open_rows(out)
    return out


def fill(log: AuditLog) -> None:
    log.append([Record(action="principal.create", actor="prn_alice", status=200,
                       client_addr=ALICE_ADDR, resource="principal:prn_x")])
    log.submit(Record(action="inference", actor="prn_alice", tenant_id="ten_bank",
                      client_addr=ALICE_ADDR, purpose=ALICE_PURPOSE, consent_id="c-1",
                      status=200, text={"prompt": "hello alice", "answer": "hi"}))
    log.submit(Record(action="inference", actor="prn_bob", tenant_id="ten_bank",
                      client_addr=BOB_ADDR, purpose="fraud check", status=200))
    log.flush()
    log.record_refusal(Record(action="authenticate", decision="deny", status=401,
                              client_addr=ANON_ADDR))
    log.submit(Record(action="inference", actor="prn_bob", status=200))  # nothing personal
    log.flush()


def test_personal_fields_are_stored_sealed_and_open_with_the_key(
        db: Database, paths: AuditPaths) -> None:
    log = AuditLog(db, paths)
    fill(log)
    stored = rows(db)
    assert [r["actor"] for r in stored] == ["prn_alice", "prn_alice", "prn_bob", None, "prn_bob"]
    for r in stored[:4]:
        assert r["client_addr"] is None and r["purpose"] is None
        assert r["personal"].startswith("pd1.sk_")
    assert stored[4]["personal"] is None
    assert stored[1]["consent_id"] == "c-1"  # not personal: the proof of consent stays
    raw = json.dumps(stored, default=str)
    for secret in (ALICE_ADDR, BOB_ADDR, ANON_ADDR, ALICE_PURPOSE, "hello alice"):
        assert secret not in raw
    got = opened(log, db)
    assert [r.get("client_addr") for r in got] == [ALICE_ADDR, ALICE_ADDR, BOB_ADDR,
                                                    ANON_ADDR, None]
    assert got[1]["purpose"] == ALICE_PURPOSE
    assert got[1]["text"] == {"prompt": "hello alice", "answer": "hi"}
    assert not any(r.get("erased") for r in got)
    with db.engine.connect() as conn:  # a key per subject; anonymous ones per day
        subjects = sorted(s for (s,) in conn.execute(select(SubjectKey.__table__.c.subject)))
    today = datetime.now(UTC).date().isoformat()
    assert subjects == [f"anonymous:{today}", "prn_alice", "prn_bob"]
    log.close()
    mode = stat.S_IMODE(paths.personal_key.stat().st_mode)
    assert mode == 0o600
    master = paths.personal_key.read_text().strip()
    if db.engine.dialect.name == "sqlite":  # neither the master key nor a clear value on disk
        data = Path(db.engine.url.database).read_bytes()
        for secret in (master, ALICE_ADDR, BOB_ADDR, ALICE_PURPOSE):
            assert secret.encode() not in data
    assert verify(db, paths).intact


def test_erasing_a_principal_keeps_the_chain_and_only_its_data_is_gone(
        db_url: str, db: Database, paths: AuditPaths, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AUTOGLM_DATABASE_URL", db_url)
    log = AuditLog(db, paths)
    fill(log)
    log.close()
    before = rows(db)

    dry = CliRunner().invoke(app, ["privacy", "erase", "--principal", "prn_alice"])
    assert dry.exit_code == 1 and "nothing erased" in dry.output
    done = CliRunner().invoke(app, ["privacy", "erase", "--principal", "prn_alice", "--yes"])
    assert done.exit_code == 0, done.output
    assert "1 key(s) destroyed" in done.output and "2 audit record(s)" in done.output

    after = rows(db)
    assert after[:5] == before  # not one byte of the sealed records changed
    erasure = after[5]
    assert erasure["action"] == "privacy.erase" and erasure["resource"] == "principal:prn_alice"
    assert erasure["detail"] == {"keys": 1, "records": 2}
    assert erasure["actor"].startswith("cli:")
    report = verify(db, paths)
    assert report.intact and report.records == 6
    ok = CliRunner().invoke(app, ["audit", "verify"])
    assert ok.exit_code == 0, ok.output

    log = AuditLog(db, paths)
    got = opened(log, db)
    assert [r.get("erased") for r in got[:4]] == [True, True, False, False]
    assert got[0]["client_addr"] is None and got[1]["purpose"] is None and got[1]["text"] is None
    assert got[2]["client_addr"] == BOB_ADDR and got[3]["client_addr"] == ANON_ADDR
    # the subject seen again gets a fresh key: what it does from now on is readable
    log.append([Record(action="key.create", actor="prn_alice", client_addr="10.1.1.1")])
    assert opened(log, db)[-1]["client_addr"] == "10.1.1.1"
    assert opened(log, db)[0]["erased"] is True
    log.close()


def test_erasing_anonymous_days(db_url: str, db: Database, paths: AuditPaths,
                                monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AUTOGLM_DATABASE_URL", db_url)
    log = AuditLog(db, paths)
    fill(log)
    log.close()
    today = datetime.now(UTC).date()
    none_yet = CliRunner().invoke(app, ["privacy", "erase", "--anonymous-before",
                                        today.isoformat(), "--yes"])
    assert none_yet.exit_code == 0 and "0 key(s) destroyed" in none_yet.output
    tomorrow = (today + timedelta(days=1)).isoformat()
    done = CliRunner().invoke(app, ["privacy", "erase", "--anonymous-before", tomorrow, "--yes"])
    assert done.exit_code == 0 and "1 key(s) destroyed" in done.output, done.output
    log = AuditLog(db, paths)
    got = opened(log, db)
    assert got[3]["erased"] is True and got[3]["client_addr"] is None
    assert got[0]["client_addr"] == ALICE_ADDR
    log.close()
    assert verify(db, paths).intact


def test_bad_erase_requests_say_what_is_wrong(db_url: str, monkeypatch) -> None:
    monkeypatch.setenv("AUTOGLM_DATABASE_URL", db_url)
    nothing = CliRunner().invoke(app, ["privacy", "erase", "--yes"])
    assert nothing.exit_code != 0 and "--principal" in nothing.output
    bad = CliRunner().invoke(app, ["privacy", "erase", "--principal", "alice'--", "--yes"])
    assert bad.exit_code != 0 and "not a principal id" in bad.output


def test_an_edited_sealed_field_is_named(db: Database, paths: AuditPaths) -> None:
    log = AuditLog(db, paths)
    fill(log)
    log.close()
    with db.engine.begin() as conn:
        other = conn.execute(select(T.c.personal).where(T.c.seq == 3)).scalar_one()
        conn.execute(update(T).where(T.c.seq == 2).values(personal=other))
    report = verify(db, paths)
    assert not report.intact and report.fault.seq == 2 and report.fault.kind == "modified"


def test_exports_keep_personal_fields_sealed_unless_asked(db: Database,
                                                          paths: AuditPaths) -> None:
    log = AuditLog(db, paths)
    fill(log)
    log.close()
    sealed = io.BytesIO()
    export(db, paths, sealed)
    assert ALICE_ADDR.encode() not in sealed.getvalue()
    opened_out = io.BytesIO()
    export(db, paths, opened_out, open_personal=True)
    lines = [orjson.loads(x) for x in opened_out.getvalue().splitlines()]
    assert lines[1]["opened"] == {"client_addr": ALICE_ADDR, "purpose": ALICE_PURPOSE,
                                  "text": {"prompt": "hello alice", "answer": "hi"},
                                  "erased": False}
    assert "opened" not in lines[4]  # nothing personal in it
    key = load_hmac_key(paths.hmac_key, create=False)
    for out in (sealed, opened_out):  # both verify on their own
        path = paths.checkpoints.parent / "export.jsonl"
        path.write_bytes(out.getvalue())
        assert verify_file(path, key, None, None).intact
