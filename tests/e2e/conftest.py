"""End-to-end fixtures: real `autoglm serve` subprocesses on free ports.

``server`` is shared by every test that can use a default server (4 slots, a 2 KiB
body limit for the 413 test). Tests that need other settings (crash recovery, one
slot, TLS) start their own, module-scoped, through ``start_server``.

When a test fails, the stderr of every server it used is attached to its report.
"""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from .support import ServerProcess

_running: list[ServerProcess] = []

MAX_BODY_BYTES = 2048


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo):
    report = yield
    if report.failed:
        servers = [v for v in getattr(item, "funcargs", {}).values()
                   if isinstance(v, ServerProcess)]
        for srv in servers or list(_running):
            report.sections.append(
                (f"autoglm serve stderr ({srv.name}, port {srv.port})", srv.stderr_tail())
            )
    return report


StartServer = Callable[..., ServerProcess]


def _start(tmp_path_factory: pytest.TempPathFactory, name: str, **kw) -> ServerProcess:
    srv = ServerProcess(tmp_path_factory.mktemp(f"e2e-{name}"), name=name, **kw)
    _running.append(srv)
    try:
        srv.start()
    except BaseException:
        srv.stop(check=False)  # never leave a half-started server behind
        _running.remove(srv)
        raise
    return srv


def _stop(srv: ServerProcess) -> None:
    try:
        srv.stop()
    finally:
        if srv in _running:
            _running.remove(srv)


@pytest.fixture(scope="session")
def start_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[StartServer]:
    """``start_server(name, args=[...], env={...}, tls=(cert, key), verify=ctx)``.

    Servers started through it are stopped (and checked to exit cleanly) by the caller's
    fixture via ``stop_server``; any still running at session end are stopped here.
    """
    started: list[ServerProcess] = []

    def start(name: str, **kw) -> ServerProcess:
        srv = _start(tmp_path_factory, name, **kw)
        started.append(srv)
        return srv

    yield start
    for srv in started:
        if srv.proc is not None:
            _stop(srv)


@pytest.fixture(scope="session")
def stop_server() -> Callable[[ServerProcess], None]:
    return _stop


@pytest.fixture(scope="session")
def server(start_server: StartServer, stop_server) -> Iterator[ServerProcess]:
    """The shared server: 4 slots, body limit of 2 KiB."""
    srv = start_server(
        "shared", args=["--slots", "4"],
        env={"AUTOGLM_MAX_BODY_BYTES": str(MAX_BODY_BYTES)},
    )
    yield srv
    stop_server(srv)


@pytest.fixture(scope="session")
def openssl() -> str:
    path = shutil.which("openssl")
    if path is None:
        pytest.skip("the `openssl` CLI is not installed: cannot make a self-signed certificate")
    return path


@pytest.fixture(scope="session")
def tls_cert(openssl: str, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A self-signed certificate for localhost / 127.0.0.1, made with the openssl CLI."""
    d = tmp_path_factory.mktemp("tls")
    cert, key = d / "cert.pem", d / "key.pem"
    subprocess.run(
        [openssl, "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
         "-nodes", "-keyout", str(key), "-out", str(cert), "-days", "2",
         "-subj", "/CN=localhost",
         "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1"],
        check=True, capture_output=True, timeout=60,
    )
    return cert, key
