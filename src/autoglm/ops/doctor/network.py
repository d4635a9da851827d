"""The network: are the server's ports free (or held by a running autoglm), and is the
clock right (one SNTP query, bounded in time; an unreachable server is a skip)."""

from __future__ import annotations

import errno
import itertools
import os
import socket
import struct
import threading
import time
from pathlib import Path

from autoglm.engine.vllm.ports import listeners, socket_owners
from autoglm.ops.doctor.result import Result, failed, passed, skipped, warned
from autoglm.ops.doctor.runner import Context

NTP_EPOCH = 2_208_988_800  # seconds from 1900-01-01 (NTP) to 1970-01-01 (Unix)
CLOCK_WARN_S = 0.5
CLOCK_FAIL_S = 30.0


# --- ports ---------------------------------------------------------------------------------
def _cmdline(pid: int) -> list[str]:
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return []
    return [a.decode(errors="replace") for a in raw.split(b"\0") if a]


def _parent(pid: int) -> int | None:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat[stat.rfind(")") + 2:].split()
    return int(fields[1]) if len(fields) > 1 else None


def is_autoglm(argv: list[str]) -> bool:
    """The ``autoglm`` command (its console script, or ``python -m autoglm``)."""
    if any(Path(a).name == "autoglm" for a in argv[:2]):
        return True
    return any(a == "-m" and b.split(".")[0] == "autoglm" for a, b in itertools.pairwise(argv))


def port_owner(port: int) -> tuple[int | None, bool]:
    """(pid listening on ``port`` where /proc shows it, whether it is autoglm: the
    process or one of its parents, e.g. a gateway worker of ``autoglm serve``)."""
    inodes = listeners(port)
    if not inodes:
        return None, False
    pids = {int(e) for e in os.listdir("/proc") if e.isdigit()}
    owners = socket_owners(inodes, pids)
    if not owners:
        return None, False
    pid = min(owners.values())
    walk: int | None = pid
    for _ in range(6):
        if walk is None or walk <= 1:
            break
        if is_autoglm(_cmdline(walk)):
            return pid, True
        walk = _parent(walk)
    return pid, False


def _bind_error(host: str, port: int) -> OSError | None:
    """Whether the server could bind ``host:port`` now (as uvicorn does: SO_REUSEADDR)."""
    try:
        family, kind, proto, _, addr = socket.getaddrinfo(
            host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)[0]
    except socket.gaierror as exc:
        return OSError(errno.EADDRNOTAVAIL, f"cannot resolve {host}: {exc}")
    with socket.socket(family, kind, proto) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(addr)
        except OSError as exc:
            return exc
    return None


def _port(name: str, host: str, port: int, setting: str) -> Result:
    rid = f"network.port_{name}"
    data = {"host": host, "port": port}
    err = _bind_error(host, port)
    if err is None:
        return passed(rid, f"{host}:{port} is free", **data)
    if err.errno == errno.EADDRINUSE:
        pid, ours = port_owner(port)
        cmd = " ".join(_cmdline(pid))[:120] if pid else ""
        data.update(pid=pid, ours=ours, command=cmd or None)
        if ours:
            return passed(rid, f"{host}:{port} is held by autoglm (pid {pid}): the server is "
                          "already running", **data)
        who = f"pid {pid} ({cmd})" if pid else "a process this user cannot see"
        kill = f"stop pid {pid}" if pid else "find it with `ss -ltnp`"
        return failed(rid, f"{host}:{port} is taken by {who}",
                      f"{kill}, or set {setting} to a free port", **data)
    if err.errno == errno.EACCES:
        return failed(rid, f"{host}:{port}: binding a port below 1024 needs privileges",
                      f"set {setting} to 1024 or above (put a proxy on 443), or grant "
                      "CAP_NET_BIND_SERVICE", **data)
    if err.errno == errno.EADDRNOTAVAIL:
        return failed(rid, f"{host} is not an address of this machine ({err.strerror})",
                      "set host to an address of this machine (0.0.0.0 for all)", **data)
    return failed(rid, f"{host}:{port}: {err.strerror or err}",
                  f"set host and {setting} to an address and port this machine can bind",
                  **data)


def ports(ctx: Context) -> list[Result]:
    s = ctx.settings
    out = []
    if s.port == 0:
        out.append(skipped("network.port_http", "port 0: the system picks a free port"))
    else:
        out.append(_port("http", s.host, s.port, "port"))
    if s.grpc_port:
        out.append(_port("grpc", s.host, s.grpc_port, "grpc_port"))
    return out


# --- clock -----------------------------------------------------------------------------------
def _ntp_time(raw: bytes) -> float:
    secs, frac = struct.unpack("!II", raw)
    return secs - NTP_EPOCH + frac / 2**32


def sntp_offset(server: str, timeout_s: float, port: int = 123) -> tuple[float, float]:
    """(offset of the local clock behind the server's, round trip) in seconds, by one SNTP
    (RFC 4330) query. Positive: this clock is slow."""
    family, kind, proto, _, addr = socket.getaddrinfo(server, port, type=socket.SOCK_DGRAM)[0]
    with socket.socket(family, kind, proto) as s:
        s.settimeout(timeout_s)
        t1 = time.time()
        secs = int(t1) + NTP_EPOCH
        stamp = struct.pack("!II", secs, int((t1 - int(t1)) * 2**32))
        # LI 0, version 4, mode 3 (client); our transmit time comes back as "originate"
        s.sendto(b"\x23" + bytes(39) + stamp, addr)
        while True:
            data, _ = s.recvfrom(512)
            t4 = time.time()
            if len(data) >= 48 and data[24:32] == stamp:
                break
    if data[0] & 0x07 != 4 or data[1] == 0:
        raise OSError(f"{server} sent no time (mode {data[0] & 7}, stratum {data[1]})")
    t2, t3 = _ntp_time(data[32:40]), _ntp_time(data[40:48])
    return ((t2 - t1) + (t3 - t4)) / 2, (t4 - t1) - (t3 - t2)


def clock(ctx: Context) -> Result:
    server = ctx.ntp_server
    if not server:
        return skipped("network.clock", "no NTP server to ask (--ntp-server '')")
    host, _, port = server.rpartition(":") if server.count(":") == 1 else (server, "", "")
    target, nport = (host, int(port)) if port.isdigit() else (server, 123)
    box: dict[str, object] = {}

    def ask() -> None:
        try:
            box["ok"] = sntp_offset(target, ctx.ntp_timeout_s, nport)
        except (OSError, ValueError) as exc:
            box["error"] = " ".join(str(exc).split())[:200] or type(exc).__name__

    # getaddrinfo has no timeout of its own: the lookup runs apart and is left behind
    t = threading.Thread(target=ask, name="doctor-sntp", daemon=True)
    t.start()
    t.join(ctx.ntp_timeout_s + 1.0)
    if "ok" not in box:
        why = box.get("error") or "no answer in time"
        return skipped("network.clock", f"NTP server {server} not reachable ({why}); clock "
                       "offset unknown", server=server)
    offset, rtt = box["ok"]  # type: ignore[misc]
    data = {"server": server, "offset_s": round(offset, 4), "round_trip_s": round(rtt, 4)}
    text = f"{abs(offset):.3f} s {'behind' if offset > 0 else 'ahead of'} {server}"
    fix = ("enable time synchronization: `timedatectl set-ntp true`, or run chronyd/ntpd "
           "against your NTP servers")
    if abs(offset) >= CLOCK_FAIL_S:
        return failed("network.clock", f"clock {text}: key expiry, TLS and audit "
                      "timestamps are wrong", fix, **data)
    if abs(offset) >= CLOCK_WARN_S:
        return warned("network.clock", f"clock {text}", fix, **data)
    return passed("network.clock", f"clock {text}", **data)
