"""Offline check of the audit chain: the first bad sequence number and what happened.

The records are read in seq order in one snapshot, streaming (memory does not grow with
the chain), and each record's HMAC is recomputed from the hash before it. At the first
record ``r`` that does not verify at the seq ``k`` it should have, with ``P`` the last
good hash, the kind is told apart by which *genuine* records can still be found around
it (a record is genuine at seq ``x`` after hash ``p`` when HMAC(p, x, its body) is its
stored hash: only the key holder can make one). The rules, in the order they are tried
(the first that holds names the fault):

1. ``inserted`` at ``r``'s seq: ``r`` lies past the head the writer recorded in
   ``audit_head`` (a row the writer never wrote).
2. a gap (``r`` is stored above ``k``): ``reordered`` if the genuine record ``k`` is
   found at a later seq (its seq was changed), else ``deleted``.
3. ``inserted``: the record after ``r`` is the genuine ``k`` after ``P`` and the one
   after it continues the chain one seq lower than it is stored (a forged record was put
   at ``k`` and the later records renumbered up to make room; an adjacent swap, where
   ``r`` is in turn genuine after that record, is excluded).
4. ``deleted``: the record after ``r`` chains to ``r``'s stored hash one seq higher than
   it is stored (``k`` was removed and the later records renumbered down).
5. ``reordered``: a later record is the genuine ``k`` after ``P`` with its own stored
   hash or with the hash stored at ``k`` (contents, hashes or seqs were swapped/moved).
6. ``modified``: anything else. The detail says which part changed: only the stored
   hash (``r``'s content is genuine and the next record chains to it), only the content
   (the next record chains to the stored hash), or both. A forged record appended at the
   tail after the head row was moved too lands here as well: nothing after it can tell
   the two apart.

Rules 2 and 5 read the rest of the chain once more (only when there is a fault).

After a prune (``autoglm audit prune``) the chain starts at the latest signed *anchor*
in the checkpoints file: record ``anchor + 1`` must chain from the anchor's hash, records
up to the anchor (deleted, or left by an interrupted prune) are not read, and checkpoints
up to it are not compared.

The tail is checked after the chain: ``truncated`` when the chain ends below the head
row's seq or below the highest signed checkpoint. Each checkpoint line must be signed by
the checkpoint key (else ``checkpoint``: the file was edited) and must name the hash the
chain holds at its seq (else ``resealed``: the records up to it were rewritten by someone
with the chain key). The fault with the lowest seq is the one reported.
"""

from __future__ import annotations

import itertools
from collections import deque
from collections.abc import Iterator, Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from sqlalchemy import Connection, String, bindparam, select, text, type_coerce
from sqlalchemy.exc import OperationalError, ProgrammingError

from autoglm.audit import checkpoints as cps
from autoglm.audit.chain import read_head
from autoglm.audit.keys import (
    AuditPaths,
    load_hmac_key,
    load_public_key,
    load_signing_key,
)
from autoglm.audit.record import COLUMNS, SEED, body, seal
from autoglm.errors import ConfigError
from autoglm.store.db import Database
from autoglm.store.models import AuditRecord

KINDS = ("modified", "deleted", "inserted", "reordered", "truncated", "resealed", "checkpoint")
Row = Mapping[str, Any]


@dataclass(frozen=True)
class Fault:
    seq: int | None
    kind: str
    detail: str


@dataclass
class Report:
    records: int = 0  # records verified (up to the fault, if any)
    head_seq: int = 0  # the last verified record
    head_hash: str = SEED.hex()
    checkpoints: int = 0  # signed checkpoints that matched the chain
    last_checkpoint: int | None = None
    anchor: int | None = None  # the chain was checked from after this seq (a prune's anchor)
    fault: Fault | None = None
    faults: list[Fault] = field(default_factory=list, repr=False)

    @property
    def intact(self) -> bool:
        return self.fault is None

    def to_dict(self) -> dict[str, Any]:
        return {"intact": self.intact, "records": self.records, "head_seq": self.head_seq,
                "head_hash": self.head_hash, "checkpoints": self.checkpoints,
                "last_checkpoint": self.last_checkpoint, "anchor": self.anchor,
                "fault": asdict(self.fault) if self.fault else None}


def verify(db: Database, paths: AuditPaths, *, chunk: int = 2000) -> Report:
    """Check the chain in ``db`` with the key and checkpoints under ``paths``."""
    try:
        key: bytes | None = load_hmac_key(paths.hmac_key, create=False)
    except ConfigError as exc:  # fine while nothing was ever sealed with it
        key, missing = None, exc
    public = public_key_of(paths)
    limit = paths.checkpoints.stat().st_size if paths.checkpoints.exists() else 0
    anchor = cps.latest_anchor(paths.checkpoints, public, limit=limit) if public else None
    report = Report()
    start, prev = (anchor.seq, bytes.fromhex(anchor.hash)) if anchor else (0, SEED)
    if anchor is not None:
        report.anchor, report.head_seq, report.head_hash = anchor.seq, anchor.seq, anchor.hash
    try:
        with db.engine.connect() as conn:
            conn = snapshot(conn)
            head_seq, _ = read_head(conn)
            if key is None:
                if conn.execute(select(AuditRecord.seq).limit(1)).first() is not None:
                    raise missing
                key = b""
            rows = conn.execution_options(stream_results=True, yield_per=chunk).execute(
                select(*raw_columns()).where(AuditRecord.seq > start)
                .order_by(AuditRecord.seq))
            ChainScan(key, head_seq, report).run((r._mapping for r in rows), start + 1, prev)
            rows.close()
            if head_seq < start:
                report.faults.append(Fault(head_seq + 1, "truncated", (
                    f"the head row says {head_seq} records were written but the prune anchor "
                    f"vouches for {start}: the head was moved back")))
            if not report.faults and head_seq > report.head_seq:
                report.faults.append(Fault(report.head_seq + 1, "truncated",
                                           f"the chain ends at seq {report.head_seq} but its "
                                           f"head row says {head_seq} were written"))
            if public is not None:
                _checkpoints(conn, paths, public, limit, report, chunk)
            elif limit:
                raise ConfigError(f"{paths.checkpoints} holds checkpoints but there is no "
                                  f"public key to check them ({paths.public_key})")
    except (OperationalError, ProgrammingError) as exc:
        reason = " ".join(str(exc.orig).split())
        raise ConfigError(f"cannot read the audit log: {reason} (is the database at "
                          "revision 0004 or later? `autoglm db upgrade`)") from None
    if report.faults:
        report.fault = min(report.faults, key=lambda f: (f.seq is None, f.seq or 0))
    return report


def raw_columns() -> list[Any]:
    """The columns, the time and ``detail`` as the stored text: a tampered value that is
    no time or no JSON must make its record fail, not the read (``body`` parses them)."""
    table = AuditRecord.__table__
    return [type_coerce(table.c[c], String).label(c) if c in ("ts", "detail") else table.c[c]
            for c in COLUMNS]


def public_key_of(paths: AuditPaths) -> Ed25519PublicKey | None:
    if paths.public_key.exists():
        return load_public_key(paths.public_key)
    if paths.signing_key.exists():
        return load_signing_key(paths).public_key()
    return None


def snapshot(conn: Connection) -> Connection:
    """One consistent view for the whole check, while writers go on appending."""
    if conn.dialect.name == "sqlite":
        conn.exec_driver_sql("BEGIN")  # the first read pins the WAL snapshot
        return conn
    return conn.execution_options(isolation_level="REPEATABLE READ")


class _Peek:
    def __init__(self, rows: Iterator[Row]) -> None:
        self._rows = rows
        self._ahead: deque[Row] = deque()

    def __iter__(self) -> _Peek:
        return self

    def __next__(self) -> Row:
        return self._ahead.popleft() if self._ahead else next(self._rows)

    def peek(self, n: int) -> list[Row | None]:
        while len(self._ahead) < n:
            nxt = next(self._rows, None)
            if nxt is None:
                break
            self._ahead.append(nxt)
        return [*self._ahead, *([None] * (n - len(self._ahead)))][:n]


class ChainScan:
    """Checks rows in seq order against the chain (also used for exported files)."""

    def __init__(self, key: bytes, head_seq: int, report: Report) -> None:
        self.key = key
        self.head_seq = head_seq
        self.report = report

    def genuine(self, prev: bytes | None, seq: int, row: Row | None) -> bool:
        """Whether ``row`` is the record sealed as ``seq`` after ``prev``."""
        if prev is None or row is None:
            return False
        try:
            return seal(self.key, prev, seq, body(row)).hex() == row["hash"]
        except (ValueError, TypeError):  # a value no writer stores: not genuine
            return False

    def run(self, rows: Iterator[Row], k: int = 1, prev: bytes = SEED) -> None:
        """From record ``k``, which must chain from ``prev``; stops at the first fault."""
        it = _Peek(rows)
        for row in it:
            if row["seq"] == k and self.genuine(prev, k, row):
                prev = bytes.fromhex(row["hash"])
                self.report.records += 1
                self.report.head_seq, self.report.head_hash = k, row["hash"]
                k += 1
                continue
            self.report.faults.append(self.classify(row, k, prev, it))
            return

    def classify(self, r: Row, k: int, prev: bytes, it: _Peek) -> Fault:
        if r["seq"] > self.head_seq:
            return Fault(r["seq"], "inserted", f"record {r['seq']} is past the last record the "
                         f"writer recorded ({self.head_seq}): it was added by hand")
        if r["seq"] > k:
            moved = self.find_sealed(k, prev, None, [r], it)
            if moved is not None:
                return Fault(k, "reordered", f"record {k} is stored as seq {moved}")
            gone = f"records {k} to {r['seq'] - 1} are" if r["seq"] > k + 1 else f"record {k} is"
            return Fault(k, "deleted", f"{gone} missing")
        s, t = it.peek(2)
        own = _unhex(r["hash"])
        if s is not None and s["seq"] == k + 1:
            if (self.genuine(prev, k, s) and not self.genuine(_unhex(s["hash"]), k + 1, r)
                    and (t is None or (t["seq"] == k + 2
                                       and self.genuine(_unhex(s["hash"]), k + 1, t)))):
                return Fault(k, "inserted", f"record {k} is not part of the chain: it was put "
                             "in and the records after it renumbered one up")
            if self.genuine(own, k + 2, s):
                return Fault(k, "deleted", f"record {k} was removed and the records after it "
                             "renumbered one down")
        moved = self.find_sealed(k, prev, r["hash"], [], it)
        if moved is not None:
            return Fault(k, "reordered", f"record {k} is stored as seq {moved}")
        try:
            sealed: bytes | None = seal(self.key, prev, k, body(r))  # r's hash, if intact
        except (ValueError, TypeError):
            sealed = None
        if s is not None and self.genuine(sealed, k + 1, s):
            return Fault(k, "modified", f"the stored hash of record {k} was changed (its "
                         "content is the original)")
        if s is not None and self.genuine(own, k + 1, s):
            return Fault(k, "modified", f"the content of record {k} was changed (its stored "
                         "hash is the original)")
        return Fault(k, "modified", f"the content and hash of record {k} were changed (or a "
                     "forged record was added in its place)")

    def find_sealed(self, k: int, prev: bytes, stored: str | None, first: list[Row],
                    it: _Peek) -> int | None:
        """The seq at which the genuine record ``k`` now lies (its hash being its own or
        ``stored``, the hash at ``k``), searching ``first`` and the rest of ``it``."""
        for row in itertools.chain(first, it):
            try:
                mac = seal(self.key, prev, k, body(row)).hex()
            except (ValueError, TypeError):
                continue
            if mac == row["hash"] or (stored is not None and mac == stored):
                return int(row["seq"])
        return None


def _unhex(value: str) -> bytes | None:
    try:
        return bytes.fromhex(value)
    except (TypeError, ValueError):
        return None


def _checkpoints(conn: Connection, paths: AuditPaths, public: Ed25519PublicKey, limit: int,
                 report: Report, chunk: int) -> None:
    """Every checkpoint line up to ``limit`` bytes, in chunks (memory stays bounded)."""
    tail = report.head_seq
    stop = min((f.seq for f in report.faults if f.seq is not None), default=None)
    query = text("SELECT seq, hash FROM audit_log WHERE seq IN :seqs").bindparams(
        bindparam("seqs", expanding=True))
    pending: list[cps.Checkpoint] = []

    def check() -> None:
        stored = dict(conn.execute(query, {"seqs": sorted({c.seq for c in pending})}).all())
        for cp in pending:
            if stored.get(cp.seq) != cp.hash:
                report.faults.append(Fault(cp.seq, "resealed", (
                    f"checkpoint line {cp.line} (signed {cp.ts}) names another hash for "
                    f"record {cp.seq}: the records up to it were rewritten with the chain key")))
            else:
                report.checkpoints += 1
        pending.clear()

    for entry in cps.read(paths.checkpoints, public, limit=limit):
        if isinstance(entry, cps.BadLine):
            report.faults.append(Fault(entry.seq, "checkpoint", f"checkpoint line {entry.line}: "
                                       f"{entry.reason}: the checkpoints file was edited"))
            continue
        if report.anchor is not None and entry.seq <= report.anchor:
            continue  # pruned: the chain starts after the anchor
        if report.last_checkpoint is None or entry.seq > report.last_checkpoint:
            report.last_checkpoint = entry.seq
        if entry.seq > tail:
            if stop is None:
                report.faults.append(Fault(tail + 1, "truncated", (
                    f"the chain ends at seq {tail} but checkpoint line {entry.line} (signed "
                    f"{entry.ts}) saw it reach {entry.seq}: the tail was cut off")))
                stop = tail + 1
            continue
        if stop is not None and entry.seq >= stop:
            continue
        pending.append(entry)
        if len(pending) >= chunk:
            check()
    if pending:
        check()
