"""The host: Python and platform, the CPU features llama.cpp uses, process limits, and
the kernel settings a server cares about (overcommit, listen backlog, huge pages)."""

from __future__ import annotations

import platform
import re
import resource
import signal
import subprocess
import sys
from pathlib import Path

from autoglm.ops.doctor.result import Result, failed, passed, skipped, warned
from autoglm.ops.doctor.runner import Context

MIN_PYTHON = (3, 11)

# llama.cpp's names for the CPU features of its build (llama_print_system_info) -> the
# flag the Linux kernel shows in /proc/cpuinfo for the same feature.
_X86_FLAGS = {
    "SSE3": "pni", "SSSE3": "ssse3", "AVX": "avx", "AVX2": "avx2", "F16C": "f16c",
    "FMA": "fma", "BMI2": "bmi2", "AVX_VNNI": "avx_vnni", "AVX512": "avx512f",
    "AVX512_VBMI": "avx512vbmi", "AVX512_VNNI": "avx512_vnni", "AVX512_BF16": "avx512_bf16",
    "AMX_INT8": "amx_int8",
}
_ARM_FLAGS = {
    "NEON": "asimd", "ARM_FMA": "asimd", "FP16_VA": "asimdhp", "DOTPROD": "asimddp",
    "MATMUL_INT8": "i8mm", "SVE": "sve", "SME": "sme",
}
_PROBE = "import llama_cpp, sys; sys.stdout.write(llama_cpp.llama_print_system_info().decode())"


def python_platform(ctx: Context) -> Result:
    v = sys.version_info
    impl = platform.python_implementation()
    libc = " ".join(platform.libc_ver()).strip()
    where = (f"{impl} {v.major}.{v.minor}.{v.micro} on {platform.system()} "
             f"{platform.release()} {platform.machine()}" + (f" ({libc})" if libc else ""))
    data = {"python": f"{v.major}.{v.minor}.{v.micro}", "implementation": impl,
            "system": platform.system(), "release": platform.release(),
            "machine": platform.machine(), "libc": libc or None}
    if (v.major, v.minor) < MIN_PYTHON:
        return failed("system.python", where, "install Python >= 3.11 and reinstall "
                      "autoglm in a virtual environment made with it", **data)
    if platform.system() != "Linux":
        return warned("system.python", f"{where}: only Linux is supported in production "
                      "(managed vLLM, port ownership and kernel checks need it)",
                      "deploy on Linux (x86_64 or aarch64)", **data)
    return passed("system.python", where, **data)


def host_cpu_flags(cpuinfo: str) -> set[str]:
    """The feature flags of the first CPU in /proc/cpuinfo (``flags`` on x86,
    ``Features`` on ARM)."""
    m = re.search(r"^(?:flags|Features)\s*:\s*(.*)$", cpuinfo, re.MULTILINE)
    return set(m.group(1).split()) if m else set()


def build_features(system_info: str) -> list[str]:
    """The CPU features llama.cpp reports as ``NAME = 1`` for its build."""
    return [name for name, on in re.findall(r"([A-Z0-9_]+) = (\d)", system_info) if on == "1"]


def _llama_system_info(timeout_s: float = 20.0) -> tuple[str | None, str]:
    """(system info, why not) from llama.cpp, asked in a child process: a build made for
    instructions this CPU lacks dies of SIGILL there, not here."""
    try:
        done = subprocess.run([sys.executable, "-c", _PROBE], check=False, capture_output=True,
                              text=True, timeout=timeout_s)
    except subprocess.TimeoutExpired:
        return None, f"llama.cpp did not answer within {timeout_s:g} s"
    if done.returncode == -signal.SIGILL:
        return None, "SIGILL"
    if done.returncode != 0:
        tail = (done.stderr.strip().splitlines() or ["no output"])[-1]
        return None, f"importing llama_cpp failed: {tail[:200]}"
    return done.stdout, ""


REBUILD = ('reinstall llama-cpp-python built for this CPU: CMAKE_ARGS="-DGGML_NATIVE=ON" '
           "pip install --force-reinstall --no-binary llama-cpp-python llama-cpp-python")


def judge_cpu(machine: str, flags: set[str], system_info: str) -> Result:
    """The host's CPU flags (empty: unknown) against what llama.cpp's build uses."""
    arm = machine in ("aarch64", "arm64")
    table = _ARM_FLAGS if arm else _X86_FLAGS
    built = build_features(system_info)
    known = [f for f in built if f in table]
    data = {"machine": machine, "llama_cpp_build": built,
            "host": sorted(f for f in table if table[f] in flags)}
    missing = [f for f in known if flags and table[f] not in flags]
    if missing:
        return failed("system.cpu", f"llama.cpp was built for {', '.join(missing)}, which "
                      "this CPU lacks (it will crash with an illegal instruction)", REBUILD,
                      **data)
    shown = ", ".join(known) or "none"
    if arm:
        if flags and "asimd" not in flags:
            return warned("system.cpu", "no NEON (asimd): llama.cpp decodes very slowly",
                          "use an ARMv8 CPU with NEON", **data)
        return passed("system.cpu", f"{machine}; llama.cpp uses {shown}", **data)
    if flags and "avx2" not in flags:
        return warned("system.cpu", f"no AVX2: llama.cpp decodes several times slower "
                      f"(it uses {shown})", "use a CPU with AVX2 (x86-64-v3) for the embedded "
                      "engine, or serve on a GPU with vLLM", **data)
    unused = "avx512f" in flags and "AVX512" not in built
    return passed("system.cpu", f"{machine}; llama.cpp uses {shown}"
                  + ("; this CPU also has AVX-512, unused by this build" if unused else ""),
                  **data)


def cpu_features(ctx: Context) -> Result:
    try:
        flags = host_cpu_flags(Path("/proc/cpuinfo").read_text())
    except OSError:
        flags = set()
    info, why = _llama_system_info()
    if info is None:
        if why == "SIGILL":
            return failed("system.cpu", "llama.cpp dies with an illegal instruction: its build "
                          "uses CPU features this machine lacks", REBUILD)
        return failed("system.cpu", why, "install the dependencies: pip install autoglm "
                      "(llama-cpp-python must import)")
    return judge_cpu(platform.machine().lower(), flags, info)


def _fmt_limit(value: int) -> str:
    return "unlimited" if value == resource.RLIM_INFINITY else str(value)


def limits(ctx: Context) -> list[Result]:
    s = ctx.settings
    upstream = sum(1 for m in s.models if m.engine != "llamacpp")
    # per gateway process: its client connections, its pooled upstream connections, and
    # room for the database, logs, engine sockets and model files
    need = s.max_connections + upstream * s.upstream_max_connections + 256
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    data = {"soft": soft, "hard": hard, "needed": need}
    fix = (f"raise the open-files limit to at least {need}: `ulimit -n {need}` in the "
           f"service's shell, LimitNOFILE={need} in its systemd unit, or nofile in "
           "/etc/security/limits.conf")
    out = []
    if soft != resource.RLIM_INFINITY and soft < 256:
        out.append(failed("system.nofile", f"open files limit {soft}: the server cannot "
                          "open its model, database and sockets", fix, **data))
    elif soft != resource.RLIM_INFINITY and soft < need:
        out.append(warned("system.nofile", f"open files limit {soft} (hard {_fmt_limit(hard)}) "
                          f"is below the {need} that max_connections={s.max_connections} needs"
                          "; connections beyond it fail with 'too many open files'", fix, **data))
    else:
        out.append(passed("system.nofile", f"open files limit {_fmt_limit(soft)} "
                          f"(needs {need})", **data))
    nproc = getattr(resource, "RLIMIT_NPROC", None)
    if nproc is None:
        out.append(skipped("system.nproc", "no process limit on this platform"))
        return out
    psoft, phard = resource.getrlimit(nproc)
    # engine processes, gateway workers and every thread (llama.cpp: one per core)
    pneed = 512
    pdata = {"soft": psoft, "hard": phard, "needed": pneed}
    if psoft != resource.RLIM_INFINITY and psoft < pneed:
        out.append(warned("system.nproc", f"process/thread limit {psoft}: engine threads "
                          "and workers may fail to start", "raise it: `ulimit -u 4096`, or "
                          "LimitNPROC=4096 in the systemd unit", **pdata))
    else:
        out.append(passed("system.nproc", f"process/thread limit {_fmt_limit(psoft)}", **pdata))
    return out


def _read(path: str) -> str | None:
    try:
        return Path(path).read_text().strip()
    except OSError:
        return None


def kernel(ctx: Context, proc: str = "/proc/sys",
           sys_root: str = "/sys/kernel/mm") -> list[Result]:
    if platform.system() != "Linux":
        return [skipped("kernel.sysctl", "not Linux: no kernel settings to check")]
    out: list[Result] = []
    over = _read(f"{proc}/vm/overcommit_memory")
    if over is None:
        out.append(skipped("kernel.overcommit_memory", "vm.overcommit_memory not readable"))
    elif over == "2":
        out.append(warned("kernel.overcommit_memory", "vm.overcommit_memory = 2 (strict): "
                          "KV caches and forked engine processes may be refused memory the "
                          "machine has", "sysctl -w vm.overcommit_memory=0 (persist it in "
                          "/etc/sysctl.d/)", value=int(over)))
    else:
        out.append(passed("kernel.overcommit_memory", f"vm.overcommit_memory = {over}",
                          value=int(over)))
    raw = _read(f"{proc}/net/core/somaxconn")
    want = min(2048, ctx.settings.max_connections)  # uvicorn listens with backlog 2048
    if raw is None:
        out.append(skipped("kernel.somaxconn", "net.core.somaxconn not readable"))
    elif int(raw) < want:
        out.append(warned("kernel.somaxconn", f"net.core.somaxconn = {raw}: the listen "
                          f"backlog is cut to it, so bursts of new connections are dropped",
                          "sysctl -w net.core.somaxconn=4096 (persist it in /etc/sysctl.d/)",
                          value=int(raw), wanted=want))
    else:
        out.append(passed("kernel.somaxconn", f"net.core.somaxconn = {raw}", value=int(raw)))
    thp = _read(f"{sys_root}/transparent_hugepage/enabled")
    m = re.search(r"\[(\w+)\]", thp or "")
    if m is None:
        out.append(skipped("kernel.transparent_hugepage", "transparent huge pages not "
                           "configurable here"))
    elif m.group(1) == "always":
        out.append(warned("kernel.transparent_hugepage", "transparent huge pages: always; "
                          "compaction stalls add latency spikes, and forked processes (Redis "
                          "saves) copy whole huge pages",
                          f"echo madvise > {sys_root}/transparent_hugepage/enabled (persist "
                          "with transparent_hugepage=madvise on the kernel command line)",
                          value=m.group(1)))
    else:
        out.append(passed("kernel.transparent_hugepage", f"transparent huge pages: "
                          f"{m.group(1)}", value=m.group(1)))
    return out
