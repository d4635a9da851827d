"""One test per kind of edit made to the stored chain with plain SQL: ``verify`` (and
``autoglm audit verify``) must name the first bad seq and what happened."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import orjson
import pytest
from sqlalchemy import Connection, delete, select, text, update
from typer.testing import CliRunner

from autoglm.audit import AuditLog, AuditPaths, Record, verify
from autoglm.audit.keys import load_hmac_key
from autoglm.audit.record import body, seal
from autoglm.cli.main import app
from autoglm.store.db import Database
from autoglm.store.models import AuditRecord

T = AuditRecord.__table__
N = 20  # records in the chain; a checkpoint every 5


def build(db: Database, paths: AuditPaths) -> None:
    log = AuditLog(db, paths, checkpoint_every=5)
    for i in range(1, N + 1):
        log.submit(Record(action="chat.completions", status=200, actor="prn_alice",
                          tenant_id="ten_bank", request_id=f"req-{i}", model="m",
                          prompt_tokens=i, completion_tokens=2 * i, latency_ms=i * 1.25,
                          client_addr="10.0.0.7", detail={"n": i}))
        log.flush()  # one commit each: checkpoints land at 5, 10, 15, 20
    log.close()


def rows(conn: Connection) -> dict[int, dict[str, Any]]:
    return {r.seq: dict(r._mapping) for r in conn.execute(select(T).order_by(T.c.seq))}


def renumber(conn: Connection, first: int, by: int) -> None:
    """seq += by for every seq >= first, in two steps so no unique check trips."""
    conn.execute(update(T).where(T.c.seq >= first).values(seq=-T.c.seq))
    conn.execute(update(T).where(T.c.seq < 0).values(seq=-T.c.seq + by))
    conn.execute(text("UPDATE audit_head SET seq = seq + :by"), {"by": by})


def modify_field(conn: Connection) -> None:
    conn.execute(update(T).where(T.c.seq == 7).values(decision="deny"))


def modify_hash(conn: Connection) -> None:
    conn.execute(update(T).where(T.c.seq == 7).values(hash="ab" * 32))


def delete_row(conn: Connection) -> None:
    conn.execute(delete(T).where(T.c.seq == 7))


def delete_and_renumber(conn: Connection) -> None:
    conn.execute(delete(T).where(T.c.seq == 7))
    renumber(conn, 8, -1)


def insert_and_renumber(conn: Connection) -> None:
    forged = {**rows(conn)[7], "request_id": "forged", "hash": "cd" * 32}
    renumber(conn, 7, 1)
    conn.execute(T.insert().values(**forged))


def insert_past_head(conn: Connection) -> None:
    forged = {**rows(conn)[N], "seq": N + 1, "request_id": "forged", "hash": "cd" * 32}
    conn.execute(T.insert().values(**forged))


def swap_seqs(conn: Connection, a: int = 5, b: int = 9) -> None:
    conn.execute(update(T).where(T.c.seq == a).values(seq=-a))
    conn.execute(update(T).where(T.c.seq == b).values(seq=a))
    conn.execute(update(T).where(T.c.seq == -a).values(seq=b))


def swap_last_two(conn: Connection) -> None:
    swap_seqs(conn, N - 1, N)


def swap_contents(conn: Connection) -> None:
    """Rows 12 and 13 trade every field but seq and hash."""
    have = rows(conn)
    for a, b in ((12, 13), (13, 12)):
        values = {k: v for k, v in have[b].items() if k not in ("seq", "hash")}
        conn.execute(update(T).where(T.c.seq == a).values(**values))


def truncate_and_roll_back_head(conn: Connection) -> None:
    """Cut the last 5 and move the head back as if they had never been written: only a
    checkpoint (at 20) still knows."""
    keep = rows(conn)[14]
    conn.execute(delete(T).where(T.c.seq > 14))
    conn.execute(text("UPDATE audit_head SET seq = 14, hash = :h"), {"h": keep["hash"]})


def truncate_only(conn: Connection) -> None:
    conn.execute(delete(T).where(T.c.seq > 14))


CASES: list[tuple[str, Callable[[Connection], None], int, str, str]] = [
    ("modify a field", modify_field, 7, "modified", "content"),
    ("modify a hash", modify_hash, 7, "modified", "stored hash"),
    ("delete a row", delete_row, 7, "deleted", "missing"),
    ("delete and renumber", delete_and_renumber, 7, "deleted", "renumbered"),
    ("insert and renumber", insert_and_renumber, 7, "inserted", "renumbered"),
    ("insert past the head", insert_past_head, N + 1, "inserted", "past"),
    ("swap two rows' seqs", swap_seqs, 5, "reordered", "stored as seq 9"),
    ("swap the last two", swap_last_two, N - 1, "reordered", f"stored as seq {N}"),
    ("swap two rows' contents", swap_contents, 12, "reordered", "stored as seq 13"),
    ("truncate, head rolled back", truncate_and_roll_back_head, 15, "truncated", "checkpoint"),
    ("truncate the tail", truncate_only, 15, "truncated", "head row"),
]


def test_an_untouched_chain_verifies(db: Database, paths: AuditPaths) -> None:
    build(db, paths)
    report = verify(db, paths)
    assert report.intact, report.fault
    assert (report.records, report.head_seq) == (N, N)
    assert report.checkpoints == 4 and report.last_checkpoint == N


@pytest.mark.parametrize(("what", "tamper", "seq", "kind", "says"), CASES,
                         ids=[c[0] for c in CASES])
def test_each_edit_is_named(db: Database, paths: AuditPaths, what: str,
                            tamper: Callable[[Connection], None], seq: int, kind: str,
                            says: str) -> None:
    build(db, paths)
    with db.engine.begin() as conn:
        tamper(conn)
    report = verify(db, paths)
    assert report.fault is not None, what
    assert (report.fault.seq, report.fault.kind) == (seq, kind), report.fault
    assert says in report.fault.detail
    assert report.records == min(seq - 1, N)  # everything before it still verifies


def test_a_chain_resealed_with_the_key_is_caught_by_a_checkpoint(
        db: Database, paths: AuditPaths) -> None:
    """Someone holding the HMAC key edits record 3 and re-seals every record after it:
    every HMAC verifies, but the signed checkpoint at 5 names the old hash."""
    build(db, paths)
    key = load_hmac_key(paths.hmac_key, create=False)
    with db.engine.begin() as conn:
        have = rows(conn)
        have[3]["decision"] = "deny"
        prev = bytes.fromhex(have[2]["hash"])
        for seq in range(3, N + 1):
            prev = seal(key, prev, seq, body(have[seq]))
            conn.execute(update(T).where(T.c.seq == seq).values(
                decision=have[seq]["decision"], hash=prev.hex()))
        conn.execute(text("UPDATE audit_head SET hash = :h"), {"h": prev.hex()})
    report = verify(db, paths)
    assert report.fault is not None
    assert (report.fault.seq, report.fault.kind) == (5, "resealed")
    assert report.records == N  # the HMACs alone no longer tell


def test_values_no_writer_stores_fail_their_record_not_the_check(
        db: Database, paths: AuditPaths) -> None:
    """SQLite keeps whatever text it is given, a time or JSON column included."""
    if db.engine.dialect.name != "sqlite":
        pytest.skip("PostgreSQL refuses such values itself")
    build(db, paths)
    with db.engine.begin() as conn:
        conn.execute(text("UPDATE audit_log SET detail = '{not json' WHERE seq = 4"))
        conn.execute(text("UPDATE audit_log SET ts = 'yesterday' WHERE seq = 6"))
    report = verify(db, paths)
    assert report.fault is not None
    assert (report.fault.seq, report.fault.kind) == (4, "modified")
    assert "content" in report.fault.detail


def test_an_edited_checkpoint_line_is_named(db: Database, paths: AuditPaths) -> None:
    build(db, paths)
    lines = paths.checkpoints.read_bytes().splitlines()
    doc = orjson.loads(lines[1])
    doc["seq"] = 9  # claims another head
    lines[1] = orjson.dumps(doc)
    paths.checkpoints.write_bytes(b"\n".join(lines) + b"\n")
    report = verify(db, paths)
    assert report.fault is not None
    assert (report.fault.seq, report.fault.kind) == (9, "checkpoint")
    assert "line 2" in report.fault.detail and "signature" in report.fault.detail


def test_cli_verify_exit_status_and_output(db_url: str, db: Database, paths: AuditPaths,
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AUTOGLM_DATABASE_URL", db_url)
    build(db, paths)
    ok = CliRunner().invoke(app, ["audit", "verify"])
    assert ok.exit_code == 0, ok.output
    assert f"intact: {N} record(s), head seq {N}" in ok.output
    as_json = CliRunner().invoke(app, ["audit", "verify", "--json"])
    assert as_json.exit_code == 0 and json.loads(as_json.stdout)["intact"] is True
    with db.engine.begin() as conn:
        delete_row(conn)
    bad = CliRunner().invoke(app, ["audit", "verify"])
    assert bad.exit_code == 1
    assert "broken at seq 7: deleted" in bad.output
    report = json.loads(CliRunner().invoke(app, ["audit", "verify", "--json"]).stdout)
    assert report["fault"]["seq"] == 7 and report["fault"]["kind"] == "deleted"


def test_cli_verify_without_the_key_says_what_is_missing(db_url: str, db: Database,
                                                         paths: AuditPaths,
                                                         monkeypatch) -> None:
    monkeypatch.setenv("AUTOGLM_DATABASE_URL", db_url)
    fresh = CliRunner().invoke(app, ["audit", "verify"])  # nothing written yet: no key needed
    assert fresh.exit_code == 0 and "intact: 0 record(s)" in fresh.output
    build(db, paths)
    paths.hmac_key.unlink()
    result = CliRunner().invoke(app, ["audit", "verify"])
    assert result.exit_code == 1
    assert "no audit key" in result.output
