"""``autoglm audit prune``: old records go, the chain still verifies from a signed anchor
(in the database and in an export), and records no checkpoint covers, or a chain that
is not intact, are refused."""

from __future__ import annotations

import io
from pathlib import Path

import orjson
import pytest
from sqlalchemy import delete, func, select, update
from typer.testing import CliRunner

from autoglm.audit import AuditPaths, verify
from autoglm.audit import checkpoints as cps
from autoglm.audit.export import export
from autoglm.audit.keys import load_signing_key
from autoglm.audit.prune import plan, prune
from autoglm.cli.main import app
from autoglm.errors import AuditError
from autoglm.store.db import Database
from autoglm.store.models import AuditRecord
from tests.audit.test_read_export import N, at, build, check

T = AuditRecord.__table__


def seqs(db: Database) -> list[int]:
    with db.engine.connect() as conn:
        return list(conn.execute(select(T.c.seq).order_by(T.c.seq)).scalars())


def hash_at(db: Database, seq: int) -> str:
    with db.engine.connect() as conn:
        return conn.execute(select(T.c.hash).where(T.c.seq == seq)).scalar_one()


def test_prune_then_verify_from_the_anchor(db: Database, paths: AuditPaths,
                                           tmp_path: Path) -> None:
    build(db, paths)
    anchor_hash = hash_at(db, 13)
    done = prune(db, paths, at(13.5))  # records 1..13 were made before it
    assert (done.records, done.first_seq, done.cut_seq, done.checkpoint) == (13, 1, 13, N)
    assert seqs(db) == list(range(14, N + 1))  # the pruned rows are gone
    last = orjson.loads(paths.checkpoints.read_bytes().splitlines()[-1])
    assert (last["kind"], last["seq"], last["hash"]) == ("anchor", 13, anchor_hash)
    report = verify(db, paths)
    assert report.intact, report.fault
    assert (report.anchor, report.records, report.head_seq) == (13, N - 13, N)
    assert report.checkpoints == 2  # 20 and 30; those at or before the anchor are past
    # the chain goes on after it
    build(db, paths, n=5, first=N + 1)
    assert verify(db, paths).intact
    # an export starting right after the cut verifies, its prev being the anchor's hash
    buf = io.BytesIO()
    export(db, paths, buf)
    docs = [orjson.loads(x) for x in buf.getvalue().splitlines()]
    assert docs[0]["seq"] == 14 and docs[0]["prev"] == anchor_hash
    (tmp_path / "after.jsonl").write_bytes(buf.getvalue())
    assert check(tmp_path / "after.jsonl", paths).intact
    # and a record deleted after the anchor is still a deletion
    with db.engine.begin() as conn:
        conn.execute(delete(T).where(T.c.seq == 14))
    report = verify(db, paths)
    assert report.fault is not None
    assert (report.fault.seq, report.fault.kind) == (14, "deleted")


def test_a_second_prune_moves_the_anchor(db: Database, paths: AuditPaths) -> None:
    build(db, paths)
    prune(db, paths, at(5.5))
    done = prune(db, paths, at(15.5))
    assert (done.first_seq, done.cut_seq, done.records) == (6, 15, 10)
    assert seqs(db)[0] == 16
    report = verify(db, paths)
    assert report.intact and report.anchor == 15
    assert prune(db, paths, at(15.5)).records == 0  # nothing more before that time


def test_records_no_checkpoint_covers_are_refused(db: Database, paths: AuditPaths) -> None:
    build(db, paths)
    lines = paths.checkpoints.read_bytes().splitlines(keepends=True)
    paths.checkpoints.unlink()  # no checkpoint at all
    with pytest.raises(AuditError, match="no signed checkpoint"):
        plan(db, paths, at(20.5))
    paths.checkpoints.write_bytes(lines[0])  # only the checkpoint at 10 was written so far
    with pytest.raises(AuditError) as caught:
        prune(db, paths, at(24.5))
    assert "up to seq 24" in caught.value.message
    assert "checkpoint is at seq 10" in caught.value.message
    assert seqs(db) == list(range(1, N + 1))  # nothing deleted
    assert paths.checkpoints.read_bytes() == lines[0]  # no anchor written
    assert prune(db, paths, at(7.5)).records == 7  # covered: fine
    assert seqs(db)[0] == 8


def test_a_chain_that_is_not_intact_is_not_pruned(db: Database, paths: AuditPaths) -> None:
    build(db, paths)
    with db.engine.begin() as conn:
        conn.execute(update(T).where(T.c.seq == 5).values(status=500))
    with pytest.raises(AuditError, match=r"not intact \(seq 5: modified\)"):
        prune(db, paths, at(12.5))
    assert seqs(db) == list(range(1, N + 1))


def test_a_checkpoint_cannot_be_made_into_an_anchor(db: Database, paths: AuditPaths) -> None:
    """Whoever can edit the database and the checkpoints file, but has no signing key,
    cannot delete old records and call it a prune."""
    build(db, paths)
    lines = paths.checkpoints.read_bytes().splitlines()
    doc = orjson.loads(lines[0])
    assert doc["seq"] == 10
    lines[0] = orjson.dumps({**doc, "kind": "anchor"})
    paths.checkpoints.write_bytes(b"\n".join(lines) + b"\n")
    with db.engine.begin() as conn:
        conn.execute(delete(T).where(T.c.seq <= 10))
    report = verify(db, paths)
    assert report.fault is not None and report.anchor is None
    assert (report.fault.seq, report.fault.kind) == (1, "deleted")
    assert any(f.kind == "checkpoint" and f.seq == 10 for f in report.faults)


def test_an_interrupted_prune_is_finished_by_the_next(db: Database,
                                                      paths: AuditPaths) -> None:
    build(db, paths)
    # the anchor was written, then only part of the records went
    line = cps.signed_line(load_signing_key(paths), 12, hash_at(db, 12), "anchor")
    cps.append_line(paths.checkpoints, line)
    with db.engine.begin() as conn:
        conn.execute(delete(T).where(T.c.seq <= 4))
    report = verify(db, paths)
    assert report.intact and report.anchor == 12  # records 5..12 are not read
    prune(db, paths, at(12.5))
    assert seqs(db)[0] == 13
    assert verify(db, paths).intact


def test_cli_prune_needs_yes(db_url: str, db: Database, paths: AuditPaths,
                             monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AUTOGLM_DATABASE_URL", db_url)
    build(db, paths)
    dry = CliRunner().invoke(app, ["audit", "prune", "--before", "2026-03-01T00:10:30Z"])
    assert dry.exit_code == 1
    assert "would delete 10 record(s), seq 1 to 10" in dry.output and "--yes" in dry.output
    assert len(seqs(db)) == N
    done = CliRunner().invoke(app, ["audit", "prune", "--before", "2026-03-01T00:10:30Z",
                                    "--yes"])
    assert done.exit_code == 0, done.output
    assert "deleted 10 record(s)" in done.output
    with db.engine.connect() as conn:
        assert conn.execute(select(func.min(T.c.seq))).scalar() == 11
    ok = CliRunner().invoke(app, ["audit", "verify"])
    assert ok.exit_code == 0 and f"intact: {N - 10} record(s) from seq 11" in ok.output
    bad = CliRunner().invoke(app, ["audit", "prune", "--before", "soon", "--yes"])
    assert bad.exit_code == 1 and "--before must be" in bad.output
