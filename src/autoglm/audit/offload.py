"""The audit writer's sealing and committing, in a process of its own.

A gateway is one Python process: its event loop and the audit writer's thread take turns
holding the interpreter (the GIL), so the ~20 µs of Python each queued record costs after
``submit`` (normalising, sealing the personal fields, the canonical body, the HMAC, the
insert) is time the event loop does not serve requests, while the machine's other cores
idle. ``SealingProcess`` moves that work to a child process: the writer thread hands each
batch over a pipe as plain tuples and gets back the first seq and each record's hash, in
one message each way per batch (the writer thread's every blocking call hands the GIL
back and forth with the event loop); the child does
everything ``commit.ChainCommitter`` does, on its own connection to the same database (the
chain takes any number of appending processes: see ``chain``). Measured on 2 cores with
``bench/gateway.py``: see README, "Gateway overhead".

What stays in the parent: the queue, ``append`` (admin acts and refusals, durable before
their response), checkpoints, folded counts (sent through the child as records),
``on_commit``. Nothing acknowledged is lost to the child:

- a record is acknowledged only once the child says its batch committed;
- before each commit the child writes what it is about to commit (the batch's number,
  first and last seq, last hash) into a slot of shared memory, no message; if it dies
  before answering, a new child is started and given the batch again with that try, and
  if the database holds its last record the batch is not written twice (``tx.holds``):
  the stored hashes are the answer;
- after three children in a row died before finishing a batch, the writer seals in its
  own thread again (and says so in the log).

Children are forked from multiprocessing's fork server (which imports this module once),
not from the gateway: a fork of a process with threads running is unsafe, and a fresh
interpreter per child costs half a second. The child ignores SIGINT and SIGTERM (a
terminal's Ctrl-C or a service manager's stop reaches the whole process group; the
gateway then drains its queue through the child) and exits when the gateway closes its
end of the pipe, or dies.
"""

from __future__ import annotations

import ctypes
import logging
import multiprocessing
import os
import pickle
import signal
import socket
import struct
import time
from collections.abc import Callable
from dataclasses import fields
from multiprocessing.connection import Connection
from operator import attrgetter
from typing import Any

from autoglm.audit.commit import Attempt, ChainCommitter, Sealed
from autoglm.audit.record import Record
from autoglm.errors import AuditError
from autoglm.privacy.vault import PersonalVault
from autoglm.store.db import Database

log = logging.getLogger(__name__)
_SENT = tuple(f.name for f in fields(Record) if f.name not in ("seq", "hash"))
_AS_TUPLE = attrgetter(*_SENT)  # a record as the child rebuilds it: Record(*values)
MAX_DEATHS = 3  # children dying in a row before a batch is done: seal in-thread again
JOIN_S = 5.0


class _Slot(ctypes.Structure):
    """Shared with the child: the try of a batch it is about to commit (``batch`` 0 while
    being written, so a torn slot is no slot)."""

    _fields_ = [("batch", ctypes.c_int64), ("first", ctypes.c_int64),
                ("last", ctypes.c_int64), ("hash", ctypes.c_char * 64)]


class SealingProcess:
    """``write`` as ``ChainCommitter.write``, done by a child process (started on the
    first batch). ``fallback``: the in-thread committer used when no child can be kept
    running. ``closing``: shared with the child, when the log began to close (monotonic
    time, the same clock in every process), 0.0 while open. ``erasures``: the vault's
    erasure count; a child that sees it change forgets its cached subject keys."""

    def __init__(self, db_url: str, key: bytes, master_key: bytes, *,
                 close_timeout_s: float, fallback: ChainCommitter,
                 erasures: Callable[[], int], log_level: str | None = None) -> None:
        self._ctx = multiprocessing.get_context("forkserver")
        # the fork server imports the main module (as it always does) and this one, once
        self._ctx.set_forkserver_preload(["__main__", __name__])
        self._args = (db_url, key, master_key, close_timeout_s, log_level)
        self._fallback = fallback
        self._erasures = erasures
        self.closing = self._ctx.RawValue("d", 0.0)
        self._slot = self._ctx.RawValue(_Slot)
        self._batches = 0  # batches sent: each one's number, for the slot
        self._proc: Any = None  # multiprocessing's Process of the fork-server context
        self._conn: Connection | None = None
        self._deaths = 0
        self.in_thread = False  # True once the writer gave up on child processes

    def write(self, batch: list[Record]) -> Sealed | None:
        if self.in_thread:
            return self._fallback.write(batch)
        self._batches += 1
        number = self._batches
        rows = [_AS_TUPLE(rec) for rec in batch]
        attempted: Attempt | None = None
        while True:
            try:
                conn = self._conn if self._conn is not None else self._start()
                fd = conn.fileno()
                _send(fd, pickle.dumps((number, self._erasures(), rows, attempted),
                                       pickle.HIGHEST_PROTOCOL))
                reply = pickle.loads(_recv(fd))
                if reply[0] == "done":
                    self._deaths = 0
                    return reply[1]
                if reply[0] == "given up":
                    self._deaths = 0
                    return None
                raise AuditError(f"the audit sealing process failed: {reply[1]}")
            except (EOFError, OSError) as exc:
                slot = self._slot
                if slot.batch == number:  # it was committing this try when it died
                    attempted = (slot.first, slot.last, slot.hash.decode("ascii"))
                code = self._reap()
                self._deaths += 1
                if self._deaths >= MAX_DEATHS:
                    log.error("the audit sealing process died %d times in a row (last: %s); "
                              "sealing in the gateway's own thread from now on",
                              self._deaths, _why(code, exc))
                    self.in_thread = True
                    return self._fallback.write(batch, attempted)
                log.error("the audit sealing process died (%s); starting another",
                          _why(code, exc))
                time.sleep(0.05 * self._deaths)

    def warm(self) -> None:
        """Start the child now (from the writer thread, the only one that talks to it)."""
        if self.in_thread or self._conn is not None:
            return
        try:
            self._start()
        except OSError as exc:  # the first batch tries again, and counts it
            log.warning("the audit sealing process could not be started yet: %s", exc)

    def close(self) -> None:
        """Let the child finish and exit (it has no batch by now: the writer thread has
        stopped); kill it if it does not within a few seconds."""
        if self._conn is not None:
            try:
                _send(self._conn.fileno(), b"")
            except OSError:
                pass
        if self._proc is not None:
            self._proc.join(JOIN_S)
            if self._proc.is_alive():
                log.error("the audit sealing process did not exit; killing it")
                self._proc.kill()
        self._reap()

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    def _start(self) -> Connection:
        mine, theirs = self._ctx.Pipe()
        _roomy(mine)
        proc = self._ctx.Process(target=_serve,
                                 args=(theirs, self.closing, self._slot, *self._args),
                                 name="autoglm-audit-sealer", daemon=True)
        try:
            proc.start()
        except Exception as exc:  # no fork server, no memory: counted as a death
            mine.close()
            theirs.close()
            raise OSError(f"{type(exc).__name__}: {exc}") from exc
        theirs.close()
        self._proc, self._conn = proc, mine
        return mine

    def _reap(self) -> int | None:
        proc, conn = self._proc, self._conn
        self._proc = self._conn = None
        if conn is not None:
            conn.close()
        if proc is None:
            return None
        proc.join(JOIN_S)
        if proc.is_alive():  # its pipe is closed: it has nothing left to do
            proc.kill()
            proc.join()
        code = proc.exitcode
        proc.close()
        return code


# Frames on the pipe (a socket pair): an 8-byte length, then a pickle; empty: "exit".
# Written and read with one system call each where they fit (the socket's buffers are made
# roomy): each blocking call lets go of the interpreter lock, and in a busy gateway taking
# it back means waiting for the event loop's thread, so the writer thread makes few.
_LEN = struct.Struct("<Q")
_BUFFER = 4 << 20  # asked of the socket pair (the system may cap it)
_FIRST_READ = 1 << 16  # most replies and batches of a busy gateway fit


def _roomy(conn: Connection) -> None:
    with socket.socket(fileno=os.dup(conn.fileno())) as sock:
        for opt in (socket.SO_SNDBUF, socket.SO_RCVBUF):
            try:
                sock.setsockopt(socket.SOL_SOCKET, opt, _BUFFER)
            except OSError:  # capped by the system: what it allows is still fine
                pass


def _send(fd: int, payload: bytes) -> None:
    data = memoryview(_LEN.pack(len(payload)) + payload)
    while data:
        data = data[os.write(fd, data):]


def _recv(fd: int) -> bytes:
    """One frame's payload (EOFError: the other end is gone)."""
    buf = os.read(fd, _FIRST_READ)
    while len(buf) < _LEN.size:
        more = os.read(fd, _LEN.size)
        if not more:
            raise EOFError
        buf += more
    want = _LEN.size + _LEN.unpack_from(buf)[0]
    if len(buf) < want:
        parts, have = [buf], len(buf)
        while have < want:
            more = os.read(fd, want - have)
            if not more:
                raise EOFError
            parts.append(more)
            have += len(more)
        buf = b"".join(parts)
    if len(buf) != want:  # one frame at a time each way, never more
        raise OSError("the audit sealing pipe is out of step")
    return buf[_LEN.size:]


def _why(code: int | None, exc: BaseException) -> str:
    if code is not None and code < 0:
        return f"killed by signal {-code}"
    if code is not None:
        return f"exit code {code}"
    return f"{type(exc).__name__}: {exc}"


def _serve(conn: Connection, closing: Any, slot: Any, db_url: str, key: bytes,
           master_key: bytes, close_timeout_s: float, log_level: str | None) -> None:
    """The child: commit each batch the parent sends until it says "exit" or goes away."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    if log_level is not None:
        from autoglm.logs import setup_logging
        setup_logging(log_level, component="audit")
    db = Database(db_url)
    vault = PersonalVault(db, master_key)
    committer = ChainCommitter(db, key, vault, close_timeout_s=close_timeout_s,
                               closing_at=lambda: float(closing.value))
    fd = conn.fileno()
    seen = 0
    number = 0

    def attempt(tried: Attempt) -> None:  # in shared memory: no message, no wake-up
        slot.batch = 0
        slot.first, slot.last, slot.hash = tried[0], tried[1], tried[2].encode("ascii")
        slot.batch = number

    try:
        while True:
            try:
                frame = _recv(fd)
            except (EOFError, OSError):
                return  # the gateway is gone
            if not frame:
                return
            number, erasures, rows, attempted = pickle.loads(frame)
            if erasures != seen:
                vault.forget()
                seen = erasures
            try:
                batch = [Record(*values) for values in rows]
                done = committer.write(batch, attempted, attempt)
            except Exception as exc:  # noqa: BLE001 - said to the parent, which logs it
                log.exception("audit sealing process error")
                reply: tuple[Any, ...] = ("error", f"{type(exc).__name__}: {exc}"[:500])
            else:
                reply = ("done", done) if done is not None else ("given up",)
            _send(fd, pickle.dumps(reply, pickle.HIGHEST_PROTOCOL))
    finally:
        conn.close()
        db.engine.dispose()
