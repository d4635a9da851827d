"""Load-time integrity for a model directory that managed vLLM children load: every file
hashed before each start, nothing unlisted, and no file changed between the check and the
end of the load. The child is the stand-in vLLM (``autoglm.devtools.standin``)."""

from __future__ import annotations

import asyncio
import os
import signal
import stat
import sys
import time
from dataclasses import replace
from pathlib import Path

import pytest

from autoglm.engine.vllm.gpus import Gpu
from autoglm.engine.vllm.managed import ManagedVllmEngine
from autoglm.errors import IntegrityError
from autoglm.settings import Settings
from autoglm.supply import trust
from autoglm.supply.registry import Registry

GPU = [[Gpu(0, "NVIDIA H100 80GB HBM3", 70000, 81559)]]


def _vllm(tmp_path: Path, first: str = "") -> Path:
    """A `vllm` executable: the stand-in, after ``first`` (shell) runs."""
    exe = tmp_path / "vllm"
    exe.write_text(f"#!/bin/sh\n{first}\nexec {sys.executable} -m autoglm.devtools.standin "
                   "--name vllm \"$@\"\n")
    exe.chmod(exe.stat().st_mode | stat.S_IEXEC)
    return exe


def _model(tmp_path: Path) -> tuple[Path, Path]:
    model = tmp_path / "Qwen2.5-7B-Instruct"
    model.mkdir()
    (model / "config.json").write_text('{"model_type": "qwen2"}')
    (model / "model.safetensors").write_bytes(os.urandom(1 << 20))
    Registry(tmp_path / "data").add(model, "qwen")
    return model, model / "model.safetensors"


def _engine(tmp_path: Path, model: Path, vllm: Path) -> ManagedVllmEngine:
    settings = Settings(data_dir=tmp_path / "data", engine="vllm", vllm_executable=str(vllm),
                        vllm_start_timeout_s=20, engine_restart_backoff_min_s=0.2,
                        engine_restart_backoff_max_s=0.5)
    state = trust.check(model, "verified", settings.data_dir)
    engine = ManagedVllmEngine(settings, model, "qwen", GPU,
                               files=trust.tree(model, settings.data_dir))
    engine.model = replace(engine.model, verification=state)
    return engine


def _flip(path: Path) -> None:
    with path.open("r+b") as fh:
        b = fh.read(1)
        fh.seek(0)
        fh.write(bytes([b[0] ^ 1]))


async def test_an_intact_directory_is_checked_and_says_when(tmp_path: Path) -> None:
    model, _ = _model(tmp_path)
    engine = _engine(tmp_path, model, _vllm(tmp_path))
    await engine.start()
    try:
        load = engine.model.verification["load"]
        assert load["files"] == 2 and load["bytes"] == (1 << 20) + 23 and load["checked_at"]
        assert (await engine.health()).status == "ready"
    finally:
        await engine.close()


async def test_a_file_changed_before_the_start_is_refused_and_nothing_runs(
        tmp_path: Path) -> None:
    model, weights = _model(tmp_path)
    marker = tmp_path / "started"
    engine = _engine(tmp_path, model, _vllm(tmp_path, f"touch {marker}"))
    _flip(weights)  # same size, other bytes
    with pytest.raises(IntegrityError, match="model.safetensors does not hash"):
        await engine.start()
    assert not marker.exists()  # vLLM never saw the file
    _flip(weights)  # as it was: the gateway's checks pass again ...
    engine = _engine(tmp_path, model, _vllm(tmp_path, f"touch {marker}"))
    (model / "extra.py").write_text("import os")  # ... then an unlisted file appears
    with pytest.raises(IntegrityError, match="extra.py not in the model's manifest"):
        await engine.start()
    assert not marker.exists()


async def test_a_file_written_while_vllm_loads_it_stops_the_child(tmp_path: Path) -> None:
    model, weights = _model(tmp_path)
    # the "load" writes into the file after the check: a swap inside the window
    writer = f"printf X | dd of={weights} bs=1 seek=7 conv=notrunc 2>/dev/null"
    engine = _engine(tmp_path, model, _vllm(tmp_path, writer))
    with pytest.raises(IntegrityError, match="changed while vLLM loaded it"):
        await engine.start()
    assert all(s.pid is None for s in engine.supervisors.values())


async def test_a_restart_after_a_change_is_refused(tmp_path: Path) -> None:
    model, weights = _model(tmp_path)
    engine = _engine(tmp_path, model, _vllm(tmp_path))
    await engine.start()
    try:
        sup = next(iter(engine.supervisors.values()))
        _flip(weights)
        os.kill(sup.pid, signal.SIGKILL)  # the child dies; its restart must check again
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and sup.restarts == 0:
            await asyncio.sleep(0.1)
        await asyncio.sleep(1.0)  # a restart or two, each refused
        assert sup.restarts >= 1 and sup.state != "ready" and sup.pid is None
        assert (await engine.health()).status != "ready"
    finally:
        await engine.close()
