"""Host checks on this machine's real inputs: Python, CPU, limits, kernel settings, the
data directory, ports (a socket held by this test; a real `autoglm serve`) and the clock
(a real SNTP exchange with a server of the test's own)."""

from __future__ import annotations

import platform
import resource
import socket
import struct
import threading
import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest

from autoglm.ops.doctor import network, storage, system
from autoglm.ops.doctor.network import NTP_EPOCH
from tests.ops.support import by_id, ctx


def test_python_and_platform_pass_here(tmp_path: Path) -> None:
    r = system.python_platform(ctx(tmp_path))
    assert r.status == "pass"
    assert platform.python_version() in r.detail and r.data["system"] == "Linux"


def test_cpu_features_of_this_build_and_host(tmp_path: Path) -> None:
    r = system.cpu_features(ctx(tmp_path))
    assert r.status == "pass", r.detail
    assert "AVX2" in r.data["llama_cpp_build"] or "NEON" in r.data["llama_cpp_build"]


def test_a_build_for_features_the_cpu_lacks_fails_with_the_rebuild() -> None:
    info, _ = system._llama_system_info()
    assert info is not None
    flags = system.host_cpu_flags(Path("/proc/cpuinfo").read_text())
    if "AVX2" not in system.build_features(info):
        pytest.skip("this llama.cpp build does not use AVX2")
    r = system.judge_cpu("x86_64", flags - {"avx2"}, info)
    assert r.status == "fail" and "AVX2" in r.detail
    assert "GGML_NATIVE=ON" in r.remedy


def test_a_cpu_without_avx2_is_a_warning() -> None:
    r = system.judge_cpu("x86_64", {"sse3", "pni", "ssse3"},
                         "CPU : SSE3 = 1 | SSSE3 = 1 | AVX = 0 | AVX2 = 0 |")
    assert r.status == "warn" and "AVX2" in r.detail and r.remedy


def test_arm_reads_neon_from_features() -> None:
    cpuinfo = "processor\t: 0\nFeatures\t: fp asimd evtstrm aes asimddp\n"
    flags = system.host_cpu_flags(cpuinfo)
    assert system.judge_cpu("aarch64", flags, "CPU : NEON = 1 | ARM_FMA = 1 | DOTPROD = 1 |"
                            ).status == "pass"
    r = system.judge_cpu("aarch64", flags, "CPU : NEON = 1 | SVE = 1 |")
    assert r.status == "fail" and "SVE" in r.detail


@pytest.fixture
def nofile_1024() -> Iterator[None]:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (1024, hard))
    yield
    resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


def test_open_files_limit_below_max_connections(tmp_path: Path, nofile_1024: None) -> None:
    found = by_id(system.limits(ctx(tmp_path, max_connections=4096)))
    r = found["system.nofile"]
    assert r.status == "warn" and r.data["soft"] == 1024 and r.data["needed"] == 4096 + 256
    assert "ulimit -n 4352" in r.remedy and "LimitNOFILE=4352" in r.remedy
    assert by_id(system.limits(ctx(tmp_path, max_connections=512)))["system.nofile"].status \
        == "pass"


def test_kernel_settings_here_do_not_fail(tmp_path: Path) -> None:
    assert all(r.status != "fail" for r in system.kernel(ctx(tmp_path)))


def test_kernel_settings_that_hurt(tmp_path: Path) -> None:
    proc, mm = tmp_path / "proc", tmp_path / "mm"
    (proc / "vm").mkdir(parents=True)
    (proc / "net" / "core").mkdir(parents=True)
    (mm / "transparent_hugepage").mkdir(parents=True)
    (proc / "vm" / "overcommit_memory").write_text("2\n")
    (proc / "net" / "core" / "somaxconn").write_text("128\n")
    (mm / "transparent_hugepage" / "enabled").write_text("[always] madvise never\n")
    found = by_id(system.kernel(ctx(tmp_path), proc=str(proc), sys_root=str(mm)))
    assert found["kernel.overcommit_memory"].status == "warn"
    assert "vm.overcommit_memory=0" in found["kernel.overcommit_memory"].remedy
    assert found["kernel.somaxconn"].status == "warn"
    assert "net.core.somaxconn=4096" in found["kernel.somaxconn"].remedy
    assert found["kernel.transparent_hugepage"].status == "warn"
    assert "madvise" in found["kernel.transparent_hugepage"].remedy
    (mm / "transparent_hugepage" / "enabled").write_text("always [madvise] never\n")
    (proc / "vm" / "overcommit_memory").write_text("1\n")
    found = by_id(system.kernel(ctx(tmp_path), proc=str(proc), sys_root=str(mm)))
    assert found["kernel.transparent_hugepage"].status == "pass"
    assert found["kernel.overcommit_memory"].status == "pass"


# --- data directory ----------------------------------------------------------------------------
def test_fresh_data_dir_is_checked_where_it_will_be(tmp_path: Path) -> None:
    found = by_id(storage.data_dir(ctx(tmp_path, data_dir=tmp_path / "a" / "b")))
    assert found["storage.data_dir"].status == "pass"
    assert "not created yet" in found["storage.data_dir"].detail
    assert not (tmp_path / "a").exists()  # the doctor creates nothing
    assert found["storage.disk_free"].data["path"] == str(tmp_path)
    assert found["storage.disk_free"].data["free_bytes"] > 0
    assert list(tmp_path.iterdir()) == []


def test_data_dir_that_is_a_file(tmp_path: Path) -> None:
    (tmp_path / "f").write_text("x")
    r = storage.data_dir(ctx(tmp_path, data_dir=tmp_path / "f"))[0]
    assert r.status == "fail" and "is a file" in r.detail


def test_data_dir_on_a_full_unwritable_file_system(tmp_path: Path) -> None:
    found = by_id(storage.data_dir(ctx(tmp_path, data_dir=Path("/proc/autoglm"))))
    assert found["storage.data_dir"].status == "fail"  # even root cannot create files there
    assert "chown" in found["storage.data_dir"].remedy
    assert found["storage.disk_free"].status == "fail"
    assert "larger disk" in found["storage.disk_free"].remedy


# --- ports -------------------------------------------------------------------------------------
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_free_port_passes(tmp_path: Path) -> None:
    port = _free_port()
    r = network.ports(ctx(tmp_path, port=port))[0]
    assert r.status == "pass" and r.id == "network.port_http" and f":{port} is free" in r.detail


def test_port_held_by_another_process_fails_naming_it(tmp_path: Path) -> None:
    import os

    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        found = by_id(network.ports(ctx(tmp_path, port=port, grpc_port=port + 1 if
                                        port < 65535 else port - 1)))
    r = found["network.port_http"]
    assert r.status == "fail" and r.data["pid"] == os.getpid() and not r.data["ours"]
    assert f"pid {os.getpid()}" in r.detail and f"stop pid {os.getpid()}" in r.remedy
    assert "set port" in r.remedy
    assert "network.port_grpc" in found


def test_an_address_this_machine_lacks(tmp_path: Path) -> None:
    r = network.ports(ctx(tmp_path, host="192.0.2.1", port=_free_port()))[0]
    assert r.status == "fail" and "not an address of this machine" in r.detail


@pytest.mark.e2e
def test_port_held_by_a_running_autoglm_is_ours(tmp_path: Path) -> None:
    from tests.e2e.support import ServerProcess

    srv = ServerProcess(tmp_path).start()
    try:
        r = network.ports(ctx(tmp_path, port=srv.port))[0]
    finally:
        srv.stop()
    assert r.status == "pass" and r.data["ours"], r.detail
    assert "held by autoglm" in r.detail


# --- clock -------------------------------------------------------------------------------------
class SntpServer:
    """A real SNTP server on a loopback UDP port whose clock is ``skew_s`` ahead."""

    def __init__(self, skew_s: float) -> None:
        self.skew_s = skew_s
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.settimeout(0.2)
        self.port = self.sock.getsockname()[1]
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    @staticmethod
    def _stamp(t: float) -> bytes:
        return struct.pack("!II", int(t) + NTP_EPOCH, int((t - int(t)) * 2**32))

    def _serve(self) -> None:
        while not self.stop.is_set():
            try:
                data, addr = self.sock.recvfrom(512)
            except TimeoutError:
                continue
            now = time.time() + self.skew_s
            reply = (bytes([0x24, 2, 0, 0xEC]) + bytes(20) + data[40:48]
                     + self._stamp(now) + self._stamp(now))
            self.sock.sendto(reply, addr)

    def close(self) -> None:
        self.stop.set()
        self.thread.join()
        self.sock.close()


@pytest.mark.parametrize(("skew", "status"), [(0.0, "pass"), (3.0, "warn"), (-120.0, "fail")])
def test_clock_offset_against_an_sntp_server(tmp_path: Path, skew: float, status: str) -> None:
    server = SntpServer(skew)
    try:
        c = replace(ctx(tmp_path), ntp_server=f"127.0.0.1:{server.port}")
        r = network.clock(c)
    finally:
        server.close()
    assert r.status == status, r.detail
    assert abs(r.data["offset_s"] - skew) < 0.25
    if status != "pass":
        assert "timedatectl set-ntp true" in r.remedy
    assert ("behind" if skew > 0 else "ahead of") in r.detail or status == "pass"


def test_unreachable_ntp_is_a_quick_skip(tmp_path: Path) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as silent:
        silent.bind(("127.0.0.1", 0))  # bound, never answers
        c = replace(ctx(tmp_path), ntp_server=f"127.0.0.1:{silent.getsockname()[1]}",
                    ntp_timeout_s=0.5)
        t0 = time.monotonic()
        r = network.clock(c)
    assert r.status == "skip" and "not reachable" in r.detail
    assert time.monotonic() - t0 < 2.0
