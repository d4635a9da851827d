"""The usage rollup against the chain it comes from (SQLite and PostgreSQL): what the table
holds is what the committed inference records say, however they were written (queued,
durable, in a caller's transaction, folded); its histograms merge in SQL to exactly what
one pass would count; and records and usage commit together or not at all, also when
the writer is killed with SIGKILL."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from collections import defaultdict
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import func, select, text

from autoglm.audit import AuditLog, AuditPaths, Record, rollup, verify
from autoglm.errors import AuditError
from autoglm.store.db import Database
from autoglm.store.models import AuditRecord, UsageRollup

ROOT = Path(__file__).resolve().parents[2]
T0 = datetime(2025, 3, 1, 22, 30, tzinfo=UTC)  # the records run past midnight
SUMS = ("requests", "errors", "denials", "prompt_tokens", "completion_tokens")


def _utc(value: datetime) -> datetime:
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def from_chain(db: Database) -> dict[tuple, dict[str, Any]]:
    """The usage the committed audit records say, summed here from the rows themselves."""
    out: dict[tuple, dict[str, Any]] = defaultdict(lambda: dict.fromkeys(
        (*SUMS, "timed", "latency_sum_ms", "latency_max_ms"), 0))
    with db.session() as s:
        records = s.scalars(select(AuditRecord).where(AuditRecord.action == "inference")).all()
    for r in records:
        ts = _utc(r.ts)
        hour = ts.replace(minute=0, second=0, microsecond=0)
        for bucket, start in (("hour", hour), ("day", hour.replace(hour=0))):
            c = out[(bucket, start, r.tenant_id or "", r.project_id or "", r.key_id or "",
                     r.model or "")]
            n = r.count
            c["requests"] += n
            if r.decision == "error" or (r.status or 0) >= 500:
                c["errors"] += n
            elif r.status is not None and 400 <= r.status < 500 and r.status != 499:
                c["denials"] += n
            c["prompt_tokens"] += (r.prompt_tokens or 0) * n
            c["completion_tokens"] += (r.completion_tokens or 0) * n
            if r.latency_ms is not None:
                c["timed"] += n
                c["latency_sum_ms"] += r.latency_ms * n
                c["latency_max_ms"] = max(c["latency_max_ms"], r.latency_ms)
    return dict(out)


def from_rollup(db: Database) -> dict[tuple, dict[str, Any]]:
    with db.session() as s:
        rows = s.scalars(select(UsageRollup)).all()
    return {(r.bucket, _utc(r.period_start), r.tenant_id, r.project_id, r.key_id, r.model): {
        **{k: getattr(r, k) for k in SUMS}, "timed": sum(r.latency_hist),
        "latency_sum_ms": r.latency_sum_ms, "latency_max_ms": r.latency_max_ms}
        for r in rows}


def assert_agree(db: Database) -> dict[tuple, dict[str, Any]]:
    chain, table = from_chain(db), from_rollup(db)
    assert set(table) == set(chain)
    for key, want in chain.items():
        got = table[key]
        for name in (*SUMS, "timed"):
            assert got[name] == want[name], (key, name)
        assert got["latency_sum_ms"] == pytest.approx(want["latency_sum_ms"], rel=1e-9)
        assert got["latency_max_ms"] == pytest.approx(want["latency_max_ms"])
    return chain


def mixed(i: int, rng: random.Random) -> Record:
    status = rng.choice([200] * 12 + [404, 429, 400, 500, 503, 499])
    decision = ("error" if status >= 500 else
                "deny" if 400 <= status < 500 and status != 499 else "allow")
    if i % 97 == 0:
        decision, status = "error", 200  # an error the engine reported inside a 200 stream
    anonymous = i % 50 == 0  # a bad key: no tenant, project, key
    tenant = rng.choice(["ten_aaaa", "ten_bbbb"])
    return Record(
        action="inference", decision=decision, status=status,
        tenant_id=None if anonymous else tenant,
        project_id=None if anonymous else f"prj_{tenant[-1]}{rng.randint(1, 2)}",
        key_id=None if anonymous else f"key_{rng.randint(1, 3)}",
        model=rng.choice(["m1", "m2", None]),
        prompt_tokens=rng.randint(1, 500) if status == 200 else None,
        completion_tokens=rng.randint(1, 200) if status == 200 else None,
        latency_ms=None if i % 41 == 0 else round(rng.lognormvariate(4, 1.2), 3),
        count=5 if decision == "deny" and i % 7 == 0 else 1,  # a folded flood
        ts=T0 + timedelta(seconds=i * 7))


def test_rollup_is_what_the_records_say(db: Database, paths: AuditPaths) -> None:
    rng = random.Random(11)
    log = AuditLog(db, paths, flush_ms=2)
    try:
        for i in range(3_000):
            rec = mixed(i, rng)
            if i % 10 == 3:
                log.append([rec])  # durable now, its own transaction
            elif i % 10 == 6:
                with db.session() as s:  # in a caller's transaction (as admin acts are)
                    log.append([rec], session=s)
                    s.commit()
            elif i % 10 == 8:
                log.append([Record(action="tenant.create", tenant_id="ten_aaaa",
                                   ts=rec.ts)])  # not inference: not usage
                log.submit(rec)
            else:
                log.submit(rec)
            if i % 400 == 0:
                log.flush()  # many batches, so rows are added to again and again
        with db.session() as s:  # a refusal rolled back with its caller: counted nowhere
            log.append([mixed(1, rng)], session=s)
            s.rollback()
    finally:
        log.close()
    chain = assert_agree(db)
    # a sanity check on the records themselves: both days, anonymous refusals, every kind
    assert {k[1].day for k in chain if k[0] == "day"} == {1, 2}
    assert any(k[2] == "" for k in chain)
    day = [v for k, v in chain.items() if k[0] == "day"]
    assert sum(v["requests"] for v in day) > 3_000  # folded records count their count
    assert all(sum(v[n] for v in day) > 0 for n in SUMS)
    assert verify(db, paths).intact


def test_histograms_merge_in_sql_to_one_pass_and_percentiles_are_close(
        db: Database, paths: AuditPaths) -> None:
    latencies = [float(i) for i in range(1, 2_001)]
    random.Random(3).shuffle(latencies)
    log = AuditLog(db, paths, flush_ms=1)
    try:
        for part in range(4):  # four commits: the row is added to three times in SQL
            for ms in latencies[part * 500:(part + 1) * 500]:
                log.submit(Record(action="inference", status=200, tenant_id="ten_p",
                                  project_id="prj_p", key_id="key_p", model="m",
                                  latency_ms=ms, ts=T0))
            log.flush()
    finally:
        log.close()
    one_pass = rollup.Usage()
    for ms in latencies:
        one_pass.add({"count": 1, "status": 200, "decision": "allow", "prompt_tokens": None,
                      "completion_tokens": None, "latency_ms": ms})
    with db.session() as s:
        rows = s.scalars(select(UsageRollup).where(UsageRollup.bucket == "hour")).all()
    assert len(rows) == 1
    row = rows[0]
    assert row.latency_hist == rollup.trimmed(one_pass.hist)
    assert row.latency_max_ms == 2000.0 and row.latency_sum_ms == sum(latencies)
    ranked = sorted(latencies)
    estimates = []
    for q in (0.5, 0.95, 0.99):
        exact = ranked[int(q * len(ranked)) - 1]
        got = rollup.percentile(row.latency_hist, q, row.latency_max_ms)
        assert got is not None and abs(got - exact) / exact < 0.2, (q, got, exact)
        estimates.append(got)
    assert estimates == sorted(estimates) and estimates[-1] <= row.latency_max_ms
    assert rollup.percentile([], 0.5, 0.0) is None


def _rollup_requests(db: Database, table: str = "usage_rollup") -> int:
    with db.engine.connect() as conn:
        return conn.execute(text(f"SELECT COALESCE(SUM(requests), 0) FROM {table} "
                                 "WHERE bucket = 'hour'")).scalar_one()


def _records(db: Database) -> int:
    with db.engine.connect() as conn:
        return conn.execute(select(func.count()).select_from(AuditRecord)).scalar_one()


def test_records_and_usage_commit_together_or_not_at_all(db: Database,
                                                         paths: AuditPaths) -> None:
    """With the usage table gone the records cannot commit either (nothing is lost: the
    writer retries); once it is back both commit, and they agree."""
    log = AuditLog(db, paths, flush_ms=1)
    try:
        log.submit(Record(action="inference", status=200, tenant_id="ten_c", latency_ms=1.0))
        log.flush()
        with db.engine.begin() as conn:
            conn.execute(text("ALTER TABLE usage_rollup RENAME TO usage_rollup_away"))
        before = _records(db)
        for i in range(20):
            log.submit(Record(action="inference", status=200, tenant_id="ten_c",
                              prompt_tokens=i, latency_ms=2.0))
        with pytest.raises(AuditError):
            log.append([Record(action="inference", status=404, decision="deny")])
        time.sleep(0.5)  # the writer has tried, and failed, a few times by now
        assert _records(db) == before and log.pending == 20
        assert _rollup_requests(db, "usage_rollup_away") == 1
        with db.engine.begin() as conn:
            conn.execute(text("ALTER TABLE usage_rollup_away RENAME TO usage_rollup"))
        log.flush(timeout_s=30)
    finally:
        log.close()
    assert _records(db) == before + 20 and _rollup_requests(db) == 21
    assert_agree(db)


CHILD = """
import itertools, sys
from pathlib import Path
from autoglm.audit import AuditLog, AuditPaths, Record
from autoglm.store.db import Database
log = AuditLog(Database(sys.argv[1]), AuditPaths.under(Path(sys.argv[2])), flush_ms=2)
print("ready", flush=True)
for i in itertools.count():
    bad = i % 17 == 0
    log.submit(Record(action="inference", status=500 if bad else 200,
                      decision="error" if bad else "allow", tenant_id="ten_k",
                      project_id=f"prj_{i % 3}", key_id=f"key_{i % 5}", model="m",
                      prompt_tokens=i % 50, completion_tokens=i % 7, latency_ms=float(i % 300)))
"""


def test_a_writer_killed_with_sigkill_leaves_usage_equal_to_its_records(
        db_url: str, db: Database, paths: AuditPaths, tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("AUTOGLM_")}
    proc = subprocess.Popen([sys.executable, "-c", CHILD, db_url, str(tmp_path / "data")],
                            cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    try:
        assert proc.stdout is not None and proc.stdout.readline() == "ready\n"
        deadline = time.monotonic() + 60
        while _records(db) < 20_000 and time.monotonic() < deadline:
            time.sleep(0.05)
        time.sleep(random.random() * 0.05)  # anywhere in a commit cycle
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.communicate(timeout=30)
    assert proc.returncode == -signal.SIGKILL
    assert _records(db) >= 20_000
    assert _rollup_requests(db) == _records(db)
    assert_agree(db)
    assert verify(db, paths).intact
