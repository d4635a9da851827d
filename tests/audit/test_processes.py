"""Several processes on one database, and a writer killed with SIGKILL under load."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from sqlalchemy import select

from autoglm.audit import AuditPaths, verify
from autoglm.store.db import Database
from autoglm.store.models import AuditRecord

ROOT = Path(__file__).resolve().parents[2]


def child(url: str, data_dir: Path, tag: str, count: int, *extra: str) -> subprocess.Popen:
    env = {k: v for k, v in os.environ.items() if not k.startswith("AUTOGLM_")}
    return subprocess.Popen([sys.executable, "-m", "tests.audit.child", url, str(data_dir),
                             tag, str(count), *extra], cwd=ROOT, env=env,
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def stored(db: Database) -> list[tuple[int, str]]:
    with db.engine.connect() as conn:
        return list(conn.execute(select(AuditRecord.seq, AuditRecord.request_id)
                                 .order_by(AuditRecord.seq)))


def _race(db_url: str, data_dir: Path, tags: tuple[str, str], per: int) -> None:
    procs = [child(db_url, data_dir, tag, per, "--go") for tag in tags]
    for p in procs:
        assert p.stdout is not None and p.stdout.readline() == "ready\n"
    for p in procs:
        assert p.stdin is not None
        p.stdin.write("go\n")
        p.stdin.flush()
    for p in procs:
        _, err = p.communicate(timeout=120)
        assert p.returncode == 0, err


def test_two_processes_appending_at_once_make_one_chain(db_url: str, db: Database,
                                                        paths: AuditPaths,
                                                        tmp_path: Path) -> None:
    """Both start together (so they also race to create the key files) and interleave
    their batches; the result is one gapless chain holding every record of each. On a
    loaded machine one process can finish before the other's first batch: the race is run
    again (up to three times) until their batches did interleave."""
    per = 5_000
    interleaved, rounds = False, 0
    while not interleaved and rounds < 3:
        tags = (f"a{rounds}", f"b{rounds}")
        _race(db_url, tmp_path / "data", tags, per)
        rounds += 1
        rows = stored(db)
        assert [seq for seq, _ in rows] == list(range(1, 2 * per * rounds + 1))
        ids = [rid for _, rid in rows]
        for tag in tags:
            assert sorted(i for i in ids if i.startswith(f"{tag}-")) == sorted(
                f"{tag}-{i}" for i in range(per))
        first_b = ids.index(f"{tags[1]}-0")
        interleaved = any(i.startswith(f"{tags[0]}-") for i in ids[first_b:])
    assert interleaved, "the two writers never interleaved in three races"
    report = verify(db, paths)
    assert report.intact, report.fault
    assert report.records == 2 * per * rounds


def test_sigkill_loses_no_acknowledged_record(db_url: str, db: Database, paths: AuditPaths,
                                              tmp_path: Path) -> None:
    """A writer submitting as fast as it can is killed with SIGKILL: every record it had
    seen committed (and said so) is in the database, and the chain verifies."""
    proc = child(db_url, tmp_path / "data", "k", 0, "--ack")
    assert proc.stdout is not None
    assert proc.stdout.readline() == "ready\n"
    acked: list[str] = []
    deadline = time.monotonic() + 60
    while len(acked) < 20_000 and time.monotonic() < deadline:
        line = proc.stdout.readline()
        assert line, proc.stderr.read() if proc.stderr else "child exited"
        acked.append(line.split()[1])
    os.kill(proc.pid, signal.SIGKILL)
    rest, _ = proc.communicate(timeout=30)
    acked += [line.split()[1] for line in rest.splitlines() if line.startswith("ack ")]
    assert proc.returncode == -signal.SIGKILL
    assert len(acked) >= 20_000
    ids = {rid for _, rid in stored(db)}
    assert not set(acked) - ids  # no acknowledged record lost
    report = verify(db, paths)
    assert report.intact, report.fault
    assert report.records == len(ids) >= len(acked)
