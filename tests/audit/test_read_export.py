"""``autoglm audit export`` and ``autoglm audit verify --file``: an export verifies on its
own (no database), every kind of edit to it is named with its seq, a resealed export is
caught by the signed checkpoints, CEF lines are escaped, and export streams."""

from __future__ import annotations

import io
import re
import tracemalloc
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import orjson
import pytest
from sqlalchemy import event, select
from typer.testing import CliRunner

from autoglm import __version__
from autoglm.audit import AuditLog, AuditPaths, Record, cef
from autoglm.audit.export import export, trailer_mac
from autoglm.audit.keys import load_hmac_key, load_public_key
from autoglm.audit.record import SEED, body, seal
from autoglm.audit.segment import verify_file
from autoglm.cli.main import app
from autoglm.store.db import Database
from autoglm.store.models import AuditRecord

T0 = datetime(2026, 3, 1, tzinfo=UTC)
N = 30  # records; record i made at T0 + i minutes; a checkpoint every 10


def at(minutes: float) -> datetime:
    return T0 + timedelta(minutes=minutes)


def build(db: Database, paths: AuditPaths, n: int = N, first: int = 1) -> None:
    log = AuditLog(db, paths, checkpoint_every=10)
    for i in range(first, first + n):
        log.submit(Record(action="key.revoke" if i % 7 == 0 else "inference",
                          decision="deny" if i % 5 == 0 else "allow", status=200,
                          actor="prn_alice" if i % 2 else "prn_bob",
                          tenant_id="ten_bank" if i % 3 else "ten_clinic", model="m",
                          request_id=f"req-{i}", prompt_tokens=i, latency_ms=i * 1.5,
                          client_addr="10.0.0.7", detail={"n": i, "note": "a=b|c\\d"},
                          ts=at(i)))
        log.flush()  # one commit each: checkpoints land at 10, 20, 30
    log.close()


def export_lines(db: Database, paths: AuditPaths, **kw: Any) -> list[dict]:
    buf = io.BytesIO()
    export(db, paths, buf, **kw)
    return [orjson.loads(line) for line in buf.getvalue().splitlines()]


def write(path: Path, docs: list[dict]) -> Path:
    path.write_bytes(b"".join(orjson.dumps(d) + b"\n" for d in docs))
    return path


def check(path: Path, paths: AuditPaths, *, with_checkpoints: bool = True):  # noqa: ANN201
    key = load_hmac_key(paths.hmac_key, create=False)
    if not with_checkpoints:
        return verify_file(path, key)
    return verify_file(path, key, load_public_key(paths.public_key), paths.checkpoints)


def stored_hash(db: Database, seq: int) -> str:
    with db.engine.connect() as conn:
        return conn.execute(select(AuditRecord.hash).where(AuditRecord.seq == seq)).scalar_one()


def test_a_window_exports_as_a_segment_that_verifies_on_its_own(
        db: Database, paths: AuditPaths, tmp_path: Path) -> None:
    build(db, paths)
    docs = export_lines(db, paths, since=at(5), until=at(20))
    records, trailer = docs[:-1], docs[-1]
    assert [d["seq"] for d in records] == list(range(5, 20))  # made in [5 min, 20 min)
    assert records[0]["prev"] == stored_hash(db, 4)
    assert all(b["prev"] == a["hash"] for a, b in zip(records, records[1:]))
    assert records[0]["ts"] == "2026-03-01T00:05:00.000+00:00"
    assert records[0]["detail"] == {"n": 5, "note": "a=b|c\\d"}
    meta = trailer["export"]
    assert (meta["first_seq"], meta["last_seq"], meta["records"]) == (5, 19, 15)
    db.close()  # from here on, no database
    report = check(write(tmp_path / "x.jsonl", docs), paths)
    assert report.intact, report.fault
    assert (report.records, report.anchor, report.head_seq) == (15, 4, 19)
    assert report.checkpoints == 1  # the one at 10 is inside it, and matches


def test_the_whole_chain_exports_from_the_seed(db: Database, paths: AuditPaths,
                                               tmp_path: Path) -> None:
    build(db, paths)
    docs = export_lines(db, paths)
    assert len(docs) == N + 1 and docs[0]["prev"] == SEED.hex()
    report = check(write(tmp_path / "all.jsonl", docs), paths)
    assert report.intact and report.records == N
    assert report.checkpoints == 3  # 10, 20, 30
    empty = export_lines(db, paths, since=at(100))
    assert len(empty) == 1 and empty[0]["export"]["records"] == 0
    assert check(write(tmp_path / "empty.jsonl", empty), paths).intact


def test_cli_round_trip(db_url: str, db: Database, paths: AuditPaths, tmp_path: Path,
                        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AUTOGLM_DATABASE_URL", db_url)
    build(db, paths)
    out = tmp_path / "audit.jsonl"
    r = CliRunner().invoke(app, ["audit", "export", "--since", "2026-03-01T00:10:00+00:00",
                                 "--until", "2026-03-02", "--out", str(out)])
    assert r.exit_code == 0, r.output
    assert "exported 21 record(s) (seq 10 to 30)" in r.output
    assert out.stat().st_mode & 0o777 == 0o600
    monkeypatch.setenv("AUTOGLM_DATABASE_URL", "postgresql+psycopg://nobody@127.0.0.1:1/none")
    ok = CliRunner().invoke(app, ["audit", "verify", "--file", str(out)])  # no database
    assert ok.exit_code == 0, ok.output
    assert "audit export intact: 21 record(s) from seq 10, head seq 30" in ok.output
    docs = [orjson.loads(x) for x in out.read_bytes().splitlines()]
    docs[3]["status"] = 201  # record 13
    bad = CliRunner().invoke(app, ["audit", "verify", "--file", str(write(out, docs))])
    assert bad.exit_code == 1
    assert "broken at seq 13: modified" in bad.output
    wrong = CliRunner().invoke(app, ["audit", "export", "--since", "last week"])
    assert wrong.exit_code == 1 and "--since must be" in wrong.output


def _field(docs: list[dict]) -> None:
    docs[6]["decision"] = "allow" if docs[6]["decision"] == "deny" else "deny"


def _hash(docs: list[dict]) -> None:
    docs[6]["hash"] = "ab" * 32


def _delete(docs: list[dict]) -> None:
    del docs[11]


def _move(docs: list[dict]) -> None:
    docs.insert(4, docs.pop(8))  # record 9 moved before record 5


def _cut_tail(docs: list[dict]) -> None:
    del docs[-4:-1]  # the last three records, the trailer kept


def _no_trailer(docs: list[dict]) -> None:
    docs.pop()


def _cut_head(docs: list[dict]) -> None:
    del docs[:3]


def _trailer(docs: list[dict]) -> None:
    docs[-1]["export"]["records"] = 29


def _append(docs: list[dict]) -> None:
    docs.insert(-1, {**docs[-2], "seq": N + 1, "prev": docs[-2]["hash"], "hash": "cd" * 32})


def _prev(docs: list[dict]) -> None:
    docs[7]["prev"] = "ef" * 32


def _garbage(docs: list[dict]) -> None:
    docs[9] = {"hello": "world"}


EDITS: list[tuple[str, Callable[[list[dict]], None], int | None, str, str]] = [
    ("a field", _field, 7, "modified", "content"),
    ("a hash", _hash, 7, "modified", "stored hash"),
    ("a line deleted", _delete, 12, "deleted", "missing"),
    ("a line moved", _move, 5, "reordered", "record 5"),
    ("the tail cut", _cut_tail, 28, "truncated", "cut from the end"),
    ("the trailer cut", _no_trailer, N + 1, "truncated", "no trailer"),
    ("the head cut", _cut_head, 1, "deleted", "cut from the start"),
    ("the trailer edited", _trailer, None, "modified", "trailer"),
    ("a line appended", _append, N + 1, "inserted", "past"),
    ("a prev edited", _prev, 8, "modified", "prev field"),
    ("a line not a record", _garbage, 10, "modified", "record 10"),
]


@pytest.mark.parametrize(("what", "edit", "seq", "kind", "says"), EDITS,
                         ids=[e[0] for e in EDITS])
def test_each_edit_of_an_export_is_named(db: Database, paths: AuditPaths, tmp_path: Path,
                                         what: str, edit: Callable[[list[dict]], None],
                                         seq: int | None, kind: str, says: str) -> None:
    build(db, paths)
    docs = export_lines(db, paths)
    edit(docs)
    report = check(write(tmp_path / "edited.jsonl", docs), paths)
    assert report.fault is not None, what
    assert (report.fault.seq, report.fault.kind) == (seq, kind), report.fault
    assert says in report.fault.detail, report.fault


def test_an_export_resealed_with_the_key_is_caught_by_a_checkpoint(
        db: Database, paths: AuditPaths, tmp_path: Path) -> None:
    """Someone holding the HMAC key edits record 3 and re-seals the rest, trailer too:
    only the signed checkpoint at 10 still knows."""
    build(db, paths)
    key = load_hmac_key(paths.hmac_key, create=False)
    docs = export_lines(db, paths)
    docs[2]["decision"] = "deny"
    prev = SEED
    for d in docs[:-1]:
        d["prev"] = prev.hex()
        prev = seal(key, prev, d["seq"], body(d))
        d["hash"] = prev.hex()
    meta = {**docs[-1]["export"], "last_hash": prev.hex()}
    docs[-1] = {"export": meta, "mac": trailer_mac(key, meta)}
    path = write(tmp_path / "resealed.jsonl", docs)
    assert check(path, paths, with_checkpoints=False).intact  # the HMACs alone agree
    report = check(path, paths)
    assert report.fault is not None
    assert (report.fault.seq, report.fault.kind) == (10, "resealed")


def cef_fields(line: str) -> list[str]:
    """The 7 header fields (split at unescaped pipes, escapes kept) and the extension."""
    fields, cur, i = [], "", 0
    while len(fields) < 7:
        ch = line[i]
        if ch == "\\":
            cur, i = cur + line[i:i + 2], i + 2
            continue
        if ch == "|":
            fields.append(cur)
            cur = ""
        else:
            cur += ch
        i += 1
    return [*fields, line[i:]]


def test_cef_escapes_header_and_extension() -> None:
    rec = {"seq": 7, "ts": "2026-03-01T00:07:00.000+00:00", "action": "odd|act\\ion",
           "decision": "deny", "status": 403, "actor": "prn_a", "resource": "a=b\nc\r\\d|e",
           "client_addr": "10.0.0.7", "tenant_id": "ten_bank", "count": 1, "prev": "00" * 32,
           "hash": "ff" * 32, "detail": {"why": "x=y"}, "model": None, "latency_ms": 2.5}
    line = cef.line(rec)
    assert "\n" not in line and "\r" not in line
    head = cef_fields(line)
    assert head[:7] == ["CEF:0", "Open-AutoGLM", "autoglm", __version__, "odd\\|act\\\\ion",
                        "odd\\|act\\\\ion", "6"]
    ext = head[7]
    assert "request=a\\=b\\nc\\r\\\\d|e" in ext
    assert "msg={\"why\":\"x\\=y\"}" in ext
    assert "rt=1772323620000" in ext and "src=10.0.0.7" in ext and "externalId=7" in ext
    assert f"cs6={'ff' * 32} cs6Label=hash" in ext and "cn1=403 cn1Label=status" in ext
    assert "cs4=" not in ext  # absent fields are left out
    pairs = re.findall(r"(\w+)=((?:[^=\\]|\\.)*?)(?= \w+=|$)", ext)  # split by unescaped =
    assert dict(pairs)["request"] == "a\\=b\\nc\\r\\\\d|e"
    assert cef.line({**rec, "client_addr": "not-an-ip"}).count("shost=not-an-ip") == 1


def test_cef_export_one_line_per_record(db: Database, paths: AuditPaths) -> None:
    build(db, paths)
    buf = io.BytesIO()
    summary = export(db, paths, buf, until=at(11), fmt="cef")
    lines = buf.getvalue().decode().splitlines()
    assert summary.records == len(lines) == 10  # no trailer
    assert all(x.startswith(f"CEF:0|Open-AutoGLM|autoglm|{__version__}|") for x in lines)
    assert [int(re.search(r"externalId=(\d+)", x).group(1)) for x in lines] == list(range(1, 11))
    assert f"cs6={stored_hash(db, 10)} " in lines[9]
    assert "|key.revoke|key.revoke|3|" in lines[6] and "|inference|inference|6|" in lines[4]
    assert "cnt=1" in lines[0] and "suser=prn_alice" in lines[0]


def test_export_streams_with_bounded_memory(db: Database, paths: AuditPaths,
                                            tmp_path: Path) -> None:
    n = 20_000
    log = AuditLog(db, paths)
    for i in range(n):
        log.submit(Record(action="inference", actor="prn_alice", tenant_id="ten_bank",
                          request_id=f"req-{i:08d}", resource="/v1/chat/completions",
                          detail={"transport": "http", "pad": "x" * 200}))
    log.close()
    cursors: list[object] = []

    def seen(conn, cursor, statement, *args) -> None:  # noqa: ANN001
        if "audit_log.hash" in statement and "LIMIT" not in statement:  # the records
            cursors.append(getattr(cursor, "name", None))

    event.listen(db.engine, "before_cursor_execute", seen)
    tracemalloc.start()
    try:
        with (tmp_path / "big.jsonl").open("wb") as fh:
            summary = export(db, paths, fh, chunk=500)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
        event.remove(db.engine, "before_cursor_execute", seen)
    size = (tmp_path / "big.jsonl").stat().st_size
    assert summary.records == n and size > 8_000_000
    assert peak < size / 4, (peak, size)  # not held: written as read
    if db.engine.dialect.name == "postgresql":
        assert cursors and all(cursors), cursors  # a named (server-side) cursor
    assert check(tmp_path / "big.jsonl", paths).intact
