"""Whether what answers on a managed vLLM child's port is that child.

A child's port is picked free, but anything on the machine may take it before the child
binds it (or after the child died, before its restart binds it again). A health probe
that only asks "does something answer 200?" would then route traffic, and the child's
API key, to that foreign listener. So readiness needs proof:

- **Ownership** (Linux): every TCP socket listening on the port (``/proc/net/tcp`` and
  ``tcp6``, any address) must be open in the child or in a process of its own (its
  session, or below it: vLLM forks). A listener held by anyone else means the port is
  taken, and the owner's pid is named where ``/proc`` shows it. No request, and so no
  key, goes to the port until this holds.
- **The key** (where ``/proc`` cannot tell): a GET of ``/v1/models`` without a key must be
  refused with 401, and only then the same GET with the child's key must succeed, as
  vLLM does under ``VLLM_API_KEY``. A listener that serves without the key is not ours;
  one that checks keys but refuses ours is not ours either. (A foreign listener that
  refuses keyless requests does see the key once; only the ownership proof avoids that.)
"""

from __future__ import annotations

import asyncio
import os
import socket
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from autoglm.errors import EngineUnavailableError

_LISTEN = "0A"  # TCP_LISTEN in /proc/net/tcp's "st" column


class PortTakenError(EngineUnavailableError, RuntimeError):
    """A child's port is held by a process that is not the child.

    A RuntimeError too, so that the process supervisor treats it as a failed start."""

    def __init__(self, name: str, port: int, pid: int | None) -> None:
        owner = f"process {pid}" if pid is not None else "a process this user cannot see"
        super().__init__(
            f"vLLM child {name}: port {port} on 127.0.0.1 is held by {owner}, not by the "
            "child; nothing is routed to it and the child moves to another port")
        self.port = port
        self.pid = pid


def free_port() -> int:
    """A TCP port that is free on 127.0.0.1 now (nothing keeps it free afterwards)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass(frozen=True)
class Verdict:
    """``none``: nothing listens yet; ``ours``: only the child does; ``foreign``: some other
    process does (``pid`` where known); ``unknown``: this system cannot tell (no /proc)."""

    state: Literal["none", "ours", "foreign", "unknown"]
    pid: int | None = None


def listeners(port: int) -> set[int] | None:
    """Inodes of the TCP sockets listening on ``port``, any address; None without /proc."""
    found: set[int] = set()
    readable = False
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            text = Path(table).read_text()
        except OSError:
            continue
        readable = True
        for line in text.splitlines()[1:]:
            f = line.split()
            if len(f) > 9 and f[3] == _LISTEN and int(f[1].rsplit(":", 1)[1], 16) == port:
                found.add(int(f[9]))
    return found if readable else None


def _processes() -> dict[int, tuple[int, int]]:
    """pid -> (parent pid, session id), for every process /proc shows."""
    out: dict[int, tuple[int, int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue  # gone meanwhile
        fields = stat[stat.rfind(")") + 2:].split()  # state ppid pgrp session ...
        if len(fields) >= 4:
            out[int(entry)] = (int(fields[1]), int(fields[3]))
    return out


def family(root: int, procs: dict[int, tuple[int, int]]) -> set[int]:
    """``root``, the processes of its session (it was started with one of its own), and
    every process below it."""
    ours = {root} | {pid for pid, (_, sid) in procs.items() if sid == root}
    children: dict[int, list[int]] = {}
    for pid, (ppid, _) in procs.items():
        children.setdefault(ppid, []).append(pid)
    todo = list(ours)
    while todo:
        for kid in children.get(todo.pop(), []):
            if kid not in ours:
                ours.add(kid)
                todo.append(kid)
    return ours


def socket_owners(inodes: set[int], pids: set[int]) -> dict[int, int]:
    """inode -> a pid among ``pids`` that has that socket open."""
    found: dict[int, int] = {}
    for pid in sorted(pids):
        fd_dir = f"/proc/{pid}/fd"
        try:
            fds = os.listdir(fd_dir)
        except OSError:
            continue  # gone, or not ours to read
        for fd in fds:
            try:
                target = os.readlink(f"{fd_dir}/{fd}")
            except OSError:
                continue
            if target.startswith("socket:["):
                inode = int(target[8:-1])
                if inode in inodes:
                    found.setdefault(inode, pid)
        if len(found) == len(inodes):
            break
    return found


class ListenerCheck:
    """Who listens on a child's port. Sockets already proven the child's are remembered
    (for that pid and port), so a probe every 50 ms during a long start reads only the
    socket tables, not every process."""

    def __init__(self) -> None:
        self._for: tuple[int, int] | None = None
        self._proven: set[int] = set()

    def __call__(self, port: int, pid: int) -> Verdict:
        if self._for != (port, pid):
            self._for, self._proven = (port, pid), set()
        inodes = listeners(port)
        if inodes is None:
            return Verdict("unknown")
        if not inodes:
            return Verdict("none")
        unproven = inodes - self._proven
        if not unproven:
            return Verdict("ours")
        procs = _processes()
        ours = family(pid, procs)
        owned = socket_owners(unproven, ours)
        self._proven |= owned.keys()
        rest = unproven - owned.keys()
        if not rest:
            return Verdict("ours")
        others = socket_owners(rest, set(procs) - ours)
        if len(others) < len(rest):  # an owner nobody has: closed meanwhile, or hidden
            still = listeners(port) or set()
            rest &= still
            if not rest:
                return Verdict("ours" if inodes & still else "none")
        return Verdict("foreign", min((others[i] for i in rest if i in others), default=None))


KeyProof = Literal["not_yet", "ours", "foreign"]


async def key_proof(port: int, api_key: str) -> KeyProof:
    """GET /v1/models without a key (must be 401), then with the child's key (must be 200)."""
    bare = await _get_status(port, "/v1/models", None)
    if bare is None or bare >= 500:
        return "not_yet"
    if bare != 401:
        return "foreign"  # serves without our key: not a child started with it
    keyed = await _get_status(port, "/v1/models", api_key)
    if keyed is None or keyed >= 500:
        return "not_yet"
    return "ours" if keyed == 200 else "foreign"


async def health(port: int) -> bool:
    """GET /health on a child (no key: vLLM checks keys only under /v1); True on 200."""
    return await _get_status(port, "/health", None) == 200


async def _get_status(port: int, path: str, api_key: str | None) -> int | None:
    """The status of a GET to 127.0.0.1:port; None when nothing answered in time."""
    try:
        reader, writer = await asyncio.wait_for(asyncio.open_connection("127.0.0.1", port), 2)
    except (OSError, asyncio.TimeoutError):
        return None
    auth = f"Authorization: Bearer {api_key}\r\n" if api_key else ""
    try:
        writer.write(f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n{auth}"
                     "Connection: close\r\n\r\n".encode())
        await writer.drain()
        line = await asyncio.wait_for(reader.readline(), 2)
        return int(line.split(b" ")[1])
    except (OSError, asyncio.TimeoutError, IndexError, ValueError):
        return None
    finally:
        writer.close()
