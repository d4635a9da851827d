"""Audit chain: sustained records/s through ``AuditLog.submit`` and what ``submit`` costs
the caller's thread, on SQLite and on PostgreSQL.

    .venv/bin/python bench/audit.py [--records 200000] [--rounds 3] [--paced-rate 5000]
        [--pg-url postgresql+psycopg://postgres@127.0.0.1:5432/postgres]
        [--writers process,thread] [--out bench/results/audit.json]

``--writers``: who seals and commits the queued records: ``process`` (a child process, what
``autoglm serve`` does by default: ``audit_seal_process``), ``thread`` (the writer thread of
the submitting process), or both, measured one after the other.

Per backend and round, on a fresh database and data directory:

- **sustained**: one thread builds and submits ``--records`` inference records as fast as
  it can (a ``Record`` with the fields a chat completion fills in, then ``submit``); the
  rate is records divided by the time from the first submit until ``close()`` returned,
  i.e. until every record was sealed and committed (flush interval 10 ms, the default).
  The chain is then verified.
- **submit latency**: each ``submit`` call is timed with ``perf_counter_ns`` during that
  run (the caller at full speed, competing with the writer thread for the GIL), and in a
  paced run at ``--paced-rate`` records/s for 2 s (a busy server). p50, p99, p99.9.

PostgreSQL: a database of its own is created on the server of ``--pg-url`` and dropped
afterwards; unreachable, it is skipped with a note. Goals (audit issue): >= 20,000
records/s on each; <= 0.05 ms p50 added to the request path. Median of the rounds.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import secrets
import statistics
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from autoglm.audit import AuditLog, AuditPaths, Record, verify
from autoglm.store.db import Database

GOAL_RATE = 20_000
GOAL_P50_MS = 0.05


def record(i: int) -> Record:
    return Record(action="inference", decision="allow", status=200,
                  actor="prn_6f1c0a2b3d4e5f60", key_id="key_0a1b2c3d4e5f6071",
                  tenant_id="ten_5e6f708192a3b4c5", project_id="prj_a1b2c3d4e5f60718",
                  resource="/v1/chat/completions", client_addr="10.20.30.40",
                  request_id=f"req_{i:016x}", client_request_id=None,
                  model="smollm2-135m-instruct", prompt_tokens=42, completion_tokens=128,
                  latency_ms=183.25)


def pct(values: list[int], q: float) -> float:
    """Percentile (nanoseconds in, milliseconds out)."""
    values = sorted(values)
    return values[min(len(values) - 1, int(q / 100 * len(values)))] / 1e6


def us(ms: float) -> str:
    return f"{ms * 1000:.2f} us"


@contextmanager
def backend(name: str, pg_url: str, tmp: Path) -> Iterator[str]:
    if name == "sqlite":
        yield f"sqlite:///{tmp / 'bench.db'}"
        return
    import psycopg

    server = pg_url.replace("postgresql+psycopg://", "postgresql://")
    admin = psycopg.connect(server, autocommit=True, connect_timeout=3)
    db_name = f"autoglm_bench_{secrets.token_hex(4)}"
    admin.execute(f'CREATE DATABASE "{db_name}"')
    try:
        yield pg_url.rsplit("/", 1)[0] + f"/{db_name}"
    finally:
        admin.execute(f'DROP DATABASE IF EXISTS "{db_name}" WITH (FORCE)')
        admin.close()


def one_round(name: str, pg_url: str, n: int, paced_rate: int,
              seal_process: bool) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as tmp_dir:
        tmp = Path(tmp_dir)
        with backend(name, pg_url, tmp) as url:
            db = Database(url)
            db.upgrade()
            paths = AuditPaths.under(tmp / "data")
            log = AuditLog(db, paths, flush_ms=10, seal_process=seal_process)
            lat: list[int] = []
            clock = time.perf_counter_ns
            t0 = time.perf_counter()
            for i in range(n):
                rec = record(i)
                s = clock()
                log.submit(rec)
                lat.append(clock() - s)
            submitted = time.perf_counter()
            log.close()
            done = time.perf_counter()
            report = verify(db, paths)
            if not report.intact or report.records != n:
                raise SystemExit(f"error: {name}: the chain does not verify: {report.fault}")

            log = AuditLog(db, paths, flush_ms=10, seal_process=seal_process)
            paced: list[int] = []
            period = 1 / paced_rate
            start = time.perf_counter()
            for i in range(int(paced_rate * 2)):
                while time.perf_counter() < start + i * period:
                    pass
                rec = record(n + i)
                s = clock()
                log.submit(rec)
                paced.append(clock() - s)
            log.close()
            db.close()
    return {"records": n, "rate": n / (done - t0), "submit_phase_s": submitted - t0,
            "drain_after_s": done - submitted,
            "loaded_p50_ms": pct(lat, 50), "loaded_p99_ms": pct(lat, 99),
            "loaded_p999_ms": pct(lat, 99.9),
            "paced_rate": paced_rate, "paced_p50_ms": pct(paced, 50),
            "paced_p99_ms": pct(paced, 99), "paced_p999_ms": pct(paced, 99.9)}


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--records", type=int, default=200_000)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--paced-rate", type=int, default=5_000)
    p.add_argument("--pg-url", default="postgresql+psycopg://postgres@127.0.0.1:5432/postgres")
    p.add_argument("--backends", default="sqlite,postgresql")
    p.add_argument("--writers", default="process,thread",
                   help="process (a sealing child process: serve's default), thread, or both")
    p.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "audit.json")
    args = p.parse_args()
    writers = [w.strip() for w in args.writers.split(",") if w.strip()]
    if not writers or set(writers) - {"process", "thread"}:
        p.error("--writers: process, thread, or both (comma-separated)")
    results: dict[str, Any] = {"cpus": os.cpu_count(), "python": platform.python_version(),
                               "records": args.records, "rounds": args.rounds, "backends": {}}
    print(f"{'backend':<11} {'writer':<8} {'records/s':>10} {'submit p50':>11} {'p99':>10} "
          f"{'p99.9':>10} {'paced p50':>10} {'p99':>10}  goal")
    for name in args.backends.split(","):
        for writer in writers:
            label = name if writer == "thread" else f"{name}+process"
            try:
                rounds = [one_round(name, args.pg_url, args.records, args.paced_rate,
                                    writer == "process") for _ in range(args.rounds)]
            except OSError as exc:  # psycopg.OperationalError is one
                print(f"{name:<11} skipped: {exc}")
                results["backends"][label] = {"skipped": str(exc)}
                break
            med = {k: statistics.median(r[k] for r in rounds) for k in rounds[0]}
            met = med["rate"] >= GOAL_RATE and med["loaded_p50_ms"] <= GOAL_P50_MS
            print(f"{name:<11} {writer:<8} {med['rate']:>10,.0f} "
                  f"{us(med['loaded_p50_ms']):>11} {us(med['loaded_p99_ms']):>10} "
                  f"{us(med['loaded_p999_ms']):>10} {us(med['paced_p50_ms']):>10} "
                  f"{us(med['paced_p99_ms']):>10}  {'MET' if met else 'MISSED'}")
            results["backends"][label] = {"median": med, "rounds": rounds, "met": met,
                                          "writer": writer}
    print(f"(goals: >= {GOAL_RATE:,} records/s committed; submit p50 <= "
          f"{GOAL_P50_MS * 1000:g} us; median of {args.rounds} rounds of {args.records:,} "
          f"records; paced: {args.paced_rate:,}/s for 2 s)")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
