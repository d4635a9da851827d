"""Managed vLLM without a GPU: `vllm` and `nvidia-smi` are stand-ins on PATH.

`vllm` runs the stand-in OpenAI server on the port it is given (what `vllm serve` does);
`nvidia-smi` reports two GPUs. Everything else is the real thing: placement, child
processes, readiness, crash restart with backoff, routing, shutdown.
"""

from __future__ import annotations

import os
import signal
import stat
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from autoglm.supply.registry import Registry

from .support import ServerProcess

pytestmark = pytest.mark.e2e

SMI = """#!/bin/sh
cat <<'CSV'
0, NVIDIA H100 80GB HBM3, 30000, 81559
1, NVIDIA H100 80GB HBM3, 70000, 81559
CSV
"""


def _exe(path: Path, text: str) -> None:
    path.write_text(text)
    path.chmod(path.stat().st_mode | stat.S_IEXEC)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:  # a zombie (exited, not yet reaped) is not alive
        return Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"
    except OSError:
        return False


@pytest.fixture(scope="module")
def managed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    work = tmp_path_factory.mktemp("vllm")
    bin_dir = work / "bin"
    bin_dir.mkdir()
    _exe(bin_dir / "vllm", f"#!/bin/sh\nexec {sys.executable} -m autoglm.devtools.standin "
                           "--name vllm \"$@\"\n")
    _exe(bin_dir / "nvidia-smi", SMI)
    model_dir = work / "Qwen2.5-7B-Instruct"
    model_dir.mkdir()
    (model_dir / "config.json").write_text("{}")
    Registry(work / "data").add(model_dir, "qwen")  # model_trust: verified needs a manifest
    srv = ServerProcess(work, name="managed", args=[
        "--engine", "vllm", "--model-path", str(model_dir), "--model-id", "qwen"],
        env={"PATH": f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}",
             "AUTOGLM_ENGINE_RESTART_BACKOFF_MIN_S": "1"}).start()
    try:
        yield srv
    finally:
        srv.stop(check=False)


def engines_view(srv: ServerProcess) -> dict[str, Any]:
    with srv.client(auth=True) as http:
        data = http.get("/admin/v1/engines").json()["data"]
    return {e["model"]: e for e in data}


def child_stats(inst: dict[str, Any]) -> dict[str, Any]:
    base = inst["url"].removesuffix("/v1")
    return httpx.get(f"{base}/_stats", timeout=2, trust_env=False).json()


def test_children_are_placed_one_per_gpu_most_free_first(managed: ServerProcess) -> None:
    view = engines_view(managed)["qwen"]
    assert view["engine"] == "vllm"
    insts = view["instances"]
    assert [(i["name"], i["gpus"], i["state"]) for i in insts] == [
        ("vllm-0", [1], "up"), ("vllm-1", [0], "up")]
    for inst in insts:
        stats = child_stats(inst)
        assert stats["gpus"] == str(inst["gpus"][0])
        assert stats["served_model_name"] == "qwen"
        assert stats["pid"] == inst["pid"] or _alive(inst["pid"])


def test_requests_are_served_by_the_children(managed: ServerProcess) -> None:
    with managed.client(auth=True) as http:
        served = set()
        for _ in range(6):
            r = http.post("/v1/chat/completions",
                          json={"model": "qwen", "messages": [{"role": "user", "content": "x"}]})
            assert r.status_code == 200
            served.add(r.json()["system_fingerprint"])
    assert served == {"vllm"}
    for child in engines_view(managed)["qwen"]["instances"]:  # its own key, no secrets
        stats = child_stats(child)
        assert stats["last_authorization"].startswith("Bearer ")
        assert managed.key not in stats["last_authorization"]
        assert "VLLM_API_KEY" in stats["env_names"]
        assert not [n for n in stats["env_names"] if n.startswith("AUTOGLM_")], stats
    code, body = managed.readyz()
    assert code == 200 and body["checks"]["qwen"]["healthy_instances"] == 2


def test_crashed_child_is_restarted_and_no_request_fails(managed: ServerProcess) -> None:
    before = engines_view(managed)["qwen"]["instances"][0]
    os.kill(before["pid"], signal.SIGKILL)
    statuses = []
    deadline = time.monotonic() + 30
    restarted = None
    with managed.client(auth=True) as http:
        while time.monotonic() < deadline:
            r = http.post("/v1/chat/completions",
                          json={"model": "qwen", "messages": [{"role": "user", "content": "x"}]})
            statuses.append(r.status_code)
            now = engines_view(managed)["qwen"]["instances"][0]
            if now["restarts"] >= 1 and now["state"] == "up" and now["pid"] != before["pid"]:
                restarted = now
                break
            time.sleep(0.1)
    assert restarted is not None, "child was not restarted within 30 s"
    assert set(statuses) == {200}
    assert engines_view(managed)["qwen"]["restarts"] >= 1


def test_shutdown_stops_every_child(tmp_path_factory: pytest.TempPathFactory,
                                    managed: ServerProcess) -> None:
    pids = [i["pid"] for i in engines_view(managed)["qwen"]["instances"]]
    assert all(_alive(p) for p in pids)
    managed.stop(check=False)
    deadline = time.monotonic() + 15
    while any(_alive(p) for p in pids) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not any(_alive(p) for p in pids)
