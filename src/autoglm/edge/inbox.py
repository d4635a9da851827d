"""At a centre: the audit records its edge nodes forward, kept once each, in chain order.

An edge seals its records with the installation's audit key (an edge is provisioned with
the centre's, as a replica is), so the centre checks every forwarded record as it comes:
it must be the next of that node's chain (``seq`` one past the last kept, its HMAC over
the last kept hash and its own canonical form). A record already kept, sent again because
the answer to an earlier forward was lost in a cut, is recognised by its seq and hash and
skipped: every record is stored exactly once. A record that does not chain (altered,
sealed with another key, or after a gap) refuses the forward with 409 and the seq the
centre expects; nothing of that forward is kept.

``verify`` checks each node's kept chain with the audit verifier's own scan (the records
are stored in ``audit_log``'s columns), so ``autoglm audit verify`` covers them.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import orjson
from sqlalchemy import String, insert, select, type_coerce, update

from autoglm.audit.record import COLUMNS, SEED, body, seal
from autoglm.audit.verify import ChainScan, Fault, Report, snapshot
from autoglm.errors import ChainConflictError, InvalidRequestError
from autoglm.store.db import Database
from autoglm.store.models import EdgeNode, EdgeRecord, utcnow
from autoglm.timefmt import stamp

_NODES, _RECORDS = EdgeNode.__table__, EdgeRecord.__table__
MAX_BATCH = 1000  # records in one forward


@dataclass(frozen=True)
class Accepted:
    node: str
    stored: int  # records new to the centre
    duplicates: int  # records it already had (an earlier forward's answer was lost)
    seq: int  # the end of the node's chain as kept now
    hash: str


def _row(raw: Any, i: int) -> dict[str, Any]:
    if not isinstance(raw, dict) or set(raw) != set(COLUMNS):
        raise InvalidRequestError(f"record {i}: expected the fields {list(COLUMNS)}")
    row = dict(raw)
    if not isinstance(row["seq"], int) or row["seq"] < 1 or not isinstance(row["hash"], str):
        raise InvalidRequestError(f"record {i}: seq must be a positive integer, hash hex")
    if not isinstance(row["detail"], dict) or not isinstance(row["ts"], str):
        raise InvalidRequestError(f"record {i}: detail must be an object, ts a time")
    try:
        row["ts"] = datetime.fromisoformat(row["ts"])
    except ValueError:
        raise InvalidRequestError(f"record {i}: ts is not a time") from None
    return row


class EdgeInbox:
    def __init__(self, db: Database, key: bytes) -> None:
        self.db = db
        self.key = key  # the installation's audit HMAC key

    def position(self, node: str) -> tuple[int, str]:
        """The end of ``node``'s chain as kept here: (0, seed) for a node never seen."""
        with self.db.engine.connect() as conn:
            row = conn.execute(select(_NODES.c.seq, _NODES.c.hash)
                               .where(_NODES.c.node == node)).first()
        return (int(row[0]), str(row[1])) if row else (0, SEED.hex())

    def accept(self, node: str, raw: Sequence[Any]) -> Accepted:
        """Keep the records of ``raw`` (in seq order) that are new; all or nothing."""
        if len(raw) > MAX_BATCH:
            raise InvalidRequestError(f"at most {MAX_BATCH} records per forward")
        rows = [_row(r, i) for i, r in enumerate(raw)]
        with self.db.engine.connect() as conn, conn.begin():
            lock = select(_NODES.c.seq, _NODES.c.hash).where(_NODES.c.node == node)
            if conn.dialect.name == "sqlite":  # take the write lock before reading
                conn.execute(update(_NODES).where(_NODES.c.node == node)
                             .values(seq=_NODES.c.seq))
            else:
                lock = lock.with_for_update()
            head = conn.execute(lock).first()
            seq, last = (int(head[0]), str(head[1])) if head else (0, SEED.hex())
            fresh: list[dict[str, Any]] = []
            duplicates = 0
            for row in rows:
                if row["seq"] <= seq:  # sent before: it must be what is kept
                    kept = conn.execute(select(_RECORDS.c.hash).where(
                        _RECORDS.c.node == node, _RECORDS.c.seq == row["seq"])).scalar()
                    if kept != row["hash"]:
                        raise ChainConflictError(
                            f"record {row['seq']} of {node} differs from the one kept; "
                            f"the centre's chain of {node} ends at {seq}")
                    duplicates += 1
                    continue
                if row["seq"] != seq + 1:
                    raise ChainConflictError(f"record {row['seq']} of {node} is not the next: "
                                             f"the centre expects {seq + 1}")
                try:
                    mac = seal(self.key, bytes.fromhex(last), row["seq"], body(row)).hex()
                except (TypeError, ValueError):  # a value no writer stores (orjson's too)
                    mac = None
                if mac != row["hash"]:
                    raise ChainConflictError(
                        f"record {row['seq']} of {node} does not chain: altered, or sealed "
                        "with another audit key than the centre's")
                seq, last = row["seq"], row["hash"]
                fresh.append({"node": node, **row})
            if fresh:
                conn.execute(insert(_RECORDS), fresh)
            now = utcnow()
            if head is None:
                conn.execute(insert(_NODES).values(node=node, seq=seq, hash=last,
                                                   first_seen=now, last_seen=now))
            else:
                conn.execute(update(_NODES).where(_NODES.c.node == node)
                             .values(seq=seq, hash=last, last_seen=now))
        return Accepted(node, len(fresh), duplicates, seq, last)

    def nodes(self) -> list[dict[str, Any]]:
        with self.db.engine.connect() as conn:
            return [dict(r._mapping) for r in conn.execute(
                select(_NODES).order_by(_NODES.c.node))]


def verify(db: Database, key: bytes) -> dict[str, Report]:
    """Each edge node's kept chain, checked from its first record (a report per node)."""
    cols = [type_coerce(_RECORDS.c[c], String).label(c) if c in ("ts", "detail")
            else _RECORDS.c[c] for c in COLUMNS]
    out: dict[str, Report] = {}
    with db.engine.connect() as conn:
        conn = snapshot(conn)
        heads = dict(conn.execute(select(_NODES.c.node, _NODES.c.seq)).all())
        for node, head in sorted(heads.items()):
            report = Report()
            rows = conn.execute(select(*cols).where(_RECORDS.c.node == node)
                                .order_by(_RECORDS.c.seq))
            ChainScan(key, int(head), report).run((r._mapping for r in rows), 1, SEED)
            if not report.faults and int(head) > report.head_seq:
                report.faults.append(Fault(
                    report.head_seq + 1, "truncated", f"the records end at seq "
                    f"{report.head_seq} but the node's head says {head} were kept"))
            if report.faults:
                report.fault = report.faults[0]
            out[node] = report
    return out


def wire(row: Mapping[str, Any]) -> dict[str, Any]:
    """An audit_log row as an edge forwards it (JSON-ready; ``body`` gives the same bytes
    on both sides)."""
    out = {name: row[name] for name in COLUMNS}
    ts = out["ts"]
    ts = ts if isinstance(ts, datetime) else datetime.fromisoformat(ts)
    out["ts"] = stamp(ts if ts.tzinfo is not None else ts.replace(tzinfo=UTC))
    if isinstance(out["detail"], str):
        out["detail"] = orjson.loads(out["detail"])
    elif out["detail"] is None:
        out["detail"] = {}
    return out


__all__ = ["Accepted", "ChainConflictError", "EdgeInbox", "verify", "wire"]
