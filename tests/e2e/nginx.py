"""A real nginx (Debian's package) of a test's own, in front of `autoglm serve` replicas.

It runs the repository's ``deploy/nginx/autoglm.conf`` with the replicas' loopback ports put
into its upstream and a free port into its ``listen``, inside a minimal main configuration
whose files all live in the test's directory. The access log names the replica
(``$upstream_addr``) of every request. Tests that need it skip, naming the package, when
there is no nginx on the PATH.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

import pytest

from .support import free_port

SHIPPED_CONF = Path(__file__).resolve().parents[2] / "deploy" / "nginx" / "autoglm.conf"

_MAIN = """\
{user}worker_processes 1;
pid {prefix}/nginx.pid;
error_log {prefix}/error.log warn;
events {{ worker_connections 1024; }}
http {{
    log_format cluster '$request_method $uri $status upstream=$upstream_addr '
                       'upstream_status=$upstream_status';
    access_log {prefix}/access.log cluster;
    client_body_temp_path {prefix}/client_body;
    proxy_temp_path {prefix}/proxy;
    fastcgi_temp_path {prefix}/fastcgi;
    uwsgi_temp_path {prefix}/uwsgi;
    scgi_temp_path {prefix}/scgi;
    include {prefix}/autoglm.conf;
}}
"""


def site_conf(shipped: str, upstreams: list[int], listen: int) -> str:
    """The shipped file with these replicas as its upstream and ``listen`` as its port."""
    servers = "".join(f"    server 127.0.0.1:{p} max_fails=1 fail_timeout=10s;\n"
                      for p in upstreams)
    body, n = re.subn(r"(?m)^    server 127\.0\.0\.1:\d+ [^\n]*\n", "", shipped)
    if n < 1:
        raise ValueError("the shipped nginx config has no upstream server lines")
    body = body.replace("    least_conn;\n", "    least_conn;\n" + servers, 1)
    body, n = re.subn(r"(?m)^    listen \d+;", f"    listen 127.0.0.1:{listen};", body)
    if n != 1:
        raise ValueError("the shipped nginx config has no single listen line")
    return body


class Nginx:
    def __init__(self, prefix: Path, upstreams: list[int]) -> None:
        exe = shutil.which("nginx") or ("/usr/sbin/nginx" if Path("/usr/sbin/nginx").exists()
                                        else None)
        if exe is None:
            pytest.skip("nginx is not installed (apt-get install nginx)")
        self.exe = exe
        self.prefix = prefix
        self.upstreams = upstreams
        self.port = 0
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> Nginx:
        self.prefix.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        (self.prefix / "autoglm.conf").write_text(
            site_conf(SHIPPED_CONF.read_text(), self.upstreams, self.port))
        # As root nginx's workers would run as nobody, who can't enter the test's directory.
        user = "user root;\n" if os.geteuid() == 0 else ""
        (self.prefix / "nginx.conf").write_text(_MAIN.format(prefix=self.prefix, user=user))
        argv = [self.exe, "-p", str(self.prefix), "-c", str(self.prefix / "nginx.conf"),
                "-e", str(self.prefix / "error.log"), "-g", "daemon off;"]
        check = subprocess.run([*argv, "-t"], capture_output=True, text=True, timeout=30)
        if check.returncode != 0:
            raise RuntimeError(f"nginx -t refused the configuration:\n{check.stderr}")
        self.proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                     stderr=subprocess.DEVNULL, start_new_session=True)
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"nginx exited at start:\n{self.error_log()}")
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.2).close()
                return self
            except OSError:
                time.sleep(0.05)
        raise RuntimeError(f"nginx did not listen on {self.port}:\n{self.error_log()}")

    def stop(self) -> None:
        if self.proc is None:
            return
        proc, self.proc = self.proc, None
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGQUIT)  # graceful: the master and its worker
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(timeout=10)

    def error_log(self) -> str:
        try:
            return (self.prefix / "error.log").read_text(errors="replace")[-4000:]
        except FileNotFoundError:
            return "<no error log>"

    def access_lines(self) -> list[dict[str, str]]:
        """One dict per request: method, uri, status, upstream (every replica tried, in
        order, as nginx writes it: ``a, b``), upstream_status."""
        out: list[dict[str, str]] = []
        try:
            text = (self.prefix / "access.log").read_text()
        except FileNotFoundError:
            return out
        for line in text.splitlines():
            m = re.match(r"(\S+) (\S+) (\d+) upstream=(.*) upstream_status=(.*)$", line)
            if m:
                out.append({"method": m[1], "uri": m[2], "status": m[3],
                            "upstream": m[4], "upstream_status": m[5]})
        return out
