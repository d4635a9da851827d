"""The centre's inbox of forwarded audit records: each kept exactly once, in chain order,
only when sealed with the installation's key; and the kept chains verify."""

from __future__ import annotations

from pathlib import Path

import pytest
from sqlalchemy import select, update

from autoglm.audit import AuditLog, AuditPaths, Record
from autoglm.audit.keys import load_hmac_key
from autoglm.edge.inbox import EdgeInbox, verify
from autoglm.edge.link import unforwarded
from autoglm.errors import ChainConflictError, InvalidRequestError
from autoglm.store.db import Database
from autoglm.store.models import EdgeRecord


def sealed(edge_db: Database, tmp_path: Path, n: int) -> tuple[bytes, list[dict]]:
    """``n`` records sealed by a real writer on the edge's database, as forwarded."""
    paths = AuditPaths.under(tmp_path / "edge-data")
    log = AuditLog(edge_db, paths)
    try:
        log.append([Record(action="chat.completions", status=200, request_id=f"r-{i}",
                           tenant_id="ten_0123456789abcdef", model="m", prompt_tokens=3,
                           completion_tokens=i, client_addr="10.1.2.3",
                           detail={"i": i, "text": "héllo"}) for i in range(n)])
    finally:
        log.close()
    rows, left = unforwarded(edge_db, 0, 1000)
    assert left == len(rows) == n
    return load_hmac_key(paths.hmac_key, create=False), rows


def test_records_are_kept_once_each_however_often_they_come(
        edge_db: Database, centre_db: Database, tmp_path: Path) -> None:
    key, rows = sealed(edge_db, tmp_path, 12)
    inbox = EdgeInbox(centre_db, key)
    assert inbox.position("site-a")[0] == 0
    first = inbox.accept("site-a", rows[:5])
    assert (first.stored, first.duplicates, first.seq) == (5, 0, 5)
    # the answer to that forward was lost: the edge sends from where it thought it was
    again = inbox.accept("site-a", rows[:9])
    assert (again.stored, again.duplicates, again.seq) == (4, 5, 9)
    assert inbox.position("site-a") == (9, rows[8]["hash"])
    last = inbox.accept("site-a", rows)
    assert (last.stored, last.duplicates, last.seq) == (3, 9, 12)
    with centre_db.engine.connect() as conn:
        kept = conn.execute(select(EdgeRecord.seq, EdgeRecord.hash).where(
            EdgeRecord.node == "site-a").order_by(EdgeRecord.seq)).all()
    assert [tuple(k) for k in kept] == [(r["seq"], r["hash"]) for r in rows]
    report = verify(centre_db, key)["site-a"]
    assert report.intact and report.records == 12 and report.head_seq == 12


def test_what_does_not_continue_the_chain_is_refused_whole(
        edge_db: Database, centre_db: Database, tmp_path: Path) -> None:
    key, rows = sealed(edge_db, tmp_path, 6)
    inbox = EdgeInbox(centre_db, key)
    with pytest.raises(ChainConflictError, match="centre expects 1"):
        inbox.accept("site-a", rows[2:])  # a gap
    altered = [dict(r) for r in rows[:3]]
    altered[2]["completion_tokens"] = 999
    with pytest.raises(ChainConflictError, match="record 3 of site-a does not chain"):
        inbox.accept("site-a", altered)
    assert inbox.position("site-a")[0] == 0  # nothing of a refused forward is kept
    with pytest.raises(ChainConflictError, match="another audit key"):
        EdgeInbox(centre_db, b"k" * 32).accept("site-a", rows)
    inbox.accept("site-a", rows[:4])
    other = [dict(r) for r in rows[:4]]
    other[3]["hash"] = "0" * 64
    with pytest.raises(ChainConflictError, match="record 4 of site-a differs"):
        inbox.accept("site-a", other)
    with pytest.raises(InvalidRequestError, match="record 0"):
        inbox.accept("site-a", [{"seq": 1}])
    odd = dict(rows[4], detail={"n": 2**70})  # no writer stores it: refused, no 500
    with pytest.raises(ChainConflictError, match="does not chain"):
        inbox.accept("site-a", [odd])
    # another node's chain is its own
    assert inbox.accept("site-b", rows[:2]).stored == 2


def test_a_kept_record_changed_later_is_found_by_verify(
        edge_db: Database, centre_db: Database, tmp_path: Path) -> None:
    key, rows = sealed(edge_db, tmp_path, 5)
    EdgeInbox(centre_db, key).accept("site-a", rows)
    with centre_db.engine.begin() as conn:
        conn.execute(update(EdgeRecord).where(EdgeRecord.node == "site-a",
                                              EdgeRecord.seq == 3).values(status=500))
    report = verify(centre_db, key)["site-a"]
    assert not report.intact and report.fault is not None
    assert (report.fault.seq, report.fault.kind) == (3, "modified")
