"""A process that appends audit records, for the multi-process and SIGKILL tests.

    python -m tests.audit.child URL DATA_DIR TAG COUNT [--ack] [--go]

Submits COUNT records (request ids ``TAG-0``, ``TAG-1``, ...; COUNT 0: until killed)
as fast as it can, every tenth through ``append`` (durable at once) and the rest through
``submit``. With ``--ack`` it prints ``ack <request id>`` for each record once it is
committed (``on_commit``), flushed at once, so the parent knows what was acknowledged.
It prints ``ready`` once its log is open; with ``--go`` it then waits for a line on stdin
before it starts (so that several start together). It closes the log (flushing
everything) when COUNT records are in.
"""

from __future__ import annotations

import itertools
import sys
import threading
from pathlib import Path

from autoglm.audit import AuditLog, AuditPaths, Record
from autoglm.store.db import Database


def main() -> None:
    url, data_dir, tag, count = sys.argv[1], Path(sys.argv[2]), sys.argv[3], int(sys.argv[4])
    ack = "--ack" in sys.argv
    out = sys.stdout
    lock = threading.Lock()

    def acknowledge(batch: list[Record]) -> None:
        with lock:
            out.write("".join(f"ack {r.request_id}\n" for r in batch))
            out.flush()

    db = Database(url)
    log = AuditLog(db, AuditPaths.under(data_dir), flush_ms=5, checkpoint_every=500,
                   on_commit=acknowledge if ack else None)
    out.write("ready\n")
    out.flush()
    if "--go" in sys.argv:
        sys.stdin.readline()
    numbers = itertools.count() if count == 0 else range(count)
    for i in numbers:
        rec = Record(action="chat.completions", status=200, actor=f"prn_{tag}",
                     request_id=f"{tag}-{i}", model="m", prompt_tokens=i % 97,
                     completion_tokens=i % 13, latency_ms=i / 7, detail={"i": i})
        if i % 10 == 0:
            log.append([rec])
            if ack:
                acknowledge([rec])
        else:
            log.submit(rec)
    log.close()
    db.close()


if __name__ == "__main__":
    main()
