"""``autoglm audit prune --before DATE``: retention that keeps the chain verifiable.

1. The chain is verified (``verify``); a chain that is not intact is not pruned (that
   would delete the evidence).
2. The cut is the last seq ``S`` before the first record made at or after ``DATE``: every
   record up to ``S`` is older than ``DATE`` (a record older than ``DATE`` that follows a
   newer one in the chain stays until a later prune).
3. ``S`` must be covered by a signed checkpoint (one at ``S`` or later, which the check
   of step 1 found matching the chain): records that no checkpoint vouches for are
   refused.
4. A signed *anchor* ``(S, hash_S)`` is appended to the checkpoints file (fsynced) before
   anything is deleted; from then on ``verify`` (database and file) starts after it.
5. Records up to ``S`` are deleted, ``chunk`` seqs per transaction (short locks; the
   writer goes on appending). An interrupted prune leaves some of them: ``verify``
   skips records up to the anchor, and the next prune deletes them.

The usage table (``usage_rollup``) is separate and keeps its counts.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime

from sqlalchemy import delete, func, select

from autoglm.audit import checkpoints as cps
from autoglm.audit.keys import AuditPaths, load_signing_key
from autoglm.audit.verify import verify
from autoglm.errors import AuditError, ConfigError
from autoglm.store.db import Database
from autoglm.store.models import AuditRecord
from autoglm.timefmt import stamp

T = AuditRecord.__table__


@dataclass(frozen=True)
class Plan:
    before: datetime
    first_seq: int  # the first record stored now (after any earlier anchor)
    cut_seq: int  # the last record to delete; cut_seq < first_seq: nothing to delete
    cut_hash: str | None
    checkpoint: int | None  # the signed checkpoint that covers the cut

    @property
    def records(self) -> int:
        return max(0, self.cut_seq - self.first_seq + 1)


def plan(db: Database, paths: AuditPaths, before: datetime) -> Plan:
    """What ``prune`` would delete; raises ``AuditError`` when it must refuse."""
    before = before.astimezone(UTC)  # SQLite compares the stored UTC text
    if not paths.signing_key.exists():
        raise ConfigError(f"no checkpoint signing key at {paths.signing_key}: prune runs "
                          "where the audit log is written (it signs the new start)")
    report = verify(db, paths)
    if report.fault is not None:
        f = report.fault
        raise AuditError(f"the audit chain is not intact (seq {f.seq}: {f.kind}): nothing is "
                         "pruned, so the evidence stays; see `autoglm audit verify`")
    start = report.anchor or 0
    with db.engine.connect() as conn:
        newer = conn.execute(select(func.min(T.c.seq + 0)).where(
            T.c.ts >= before, T.c.seq > start)).scalar()
        cut = int(newer) - 1 if newer is not None else report.head_seq
        cut_hash = conn.execute(select(T.c.hash).where(T.c.seq == cut)).scalar()
    result = Plan(before, start + 1, cut, cut_hash, report.last_checkpoint)
    if result.records and (report.last_checkpoint is None or report.last_checkpoint < cut):
        last = (f"the last signed checkpoint is at seq {report.last_checkpoint}"
                if report.last_checkpoint is not None else "no signed checkpoint exists yet")
        raise AuditError(
            f"records up to seq {cut} are older than {stamp(before)} but {last}: records no "
            "checkpoint covers are not pruned. The server writes one every "
            "audit_checkpoint_every records, every audit_checkpoint_s seconds and at "
            "shutdown: try again after the next, or prune an earlier date")
    return result


def prune(db: Database, paths: AuditPaths, before: datetime, *, chunk: int = 10_000) -> Plan:
    """Delete the records of ``plan`` (and any an interrupted prune left up to its
    anchor); returns the plan (``records``: how many it cut)."""
    todo = plan(db, paths, before)
    upto = todo.first_seq - 1  # the anchor's seq: leftovers of an interrupted prune
    if todo.records:
        if todo.cut_hash is None:  # verify just read it; only a concurrent prune gets here
            raise AuditError(f"record {todo.cut_seq} went away while pruning: run prune again")
        line = cps.signed_line(load_signing_key(paths), todo.cut_seq, todo.cut_hash, "anchor")
        cps.append_line(paths.checkpoints, line)  # durable before any record goes
        upto = todo.cut_seq
    with db.engine.connect() as conn:
        low = conn.execute(select(func.min(T.c.seq))).scalar()
    if low is None or low > upto:
        return todo
    for end in range(int(low) + chunk - 1, upto + chunk, chunk):
        with db.engine.begin() as conn:
            conn.execute(delete(T).where(T.c.seq <= min(end, upto)))
    return todo
