"""Managed vLLM planning: GPU discovery (nvidia-smi stand-in on PATH), placement, fallback."""

from __future__ import annotations

import os
import shutil
import stat
from pathlib import Path

import pytest

from autoglm.engine.catalog import embedded_model_path
from autoglm.engine.factory import build_engines
from autoglm.engine.llamacpp.client import LlamaCppEngine
from autoglm.engine.vllm.gpus import Gpu, discover, place
from autoglm.errors import ConfigError
from autoglm.settings import Settings

SMI = """#!/bin/sh
cat <<'CSV'
0, NVIDIA H100 80GB HBM3, 20000, 81559
1, NVIDIA H100 80GB HBM3, 80000, 81559
2, NVIDIA H100 80GB HBM3, 50000, 81559
CSV
"""


def executable(path: Path, text: str) -> Path:
    path.write_text(text)
    path.chmod(path.stat().st_mode | stat.S_IEXEC)
    return path


@pytest.fixture
def fake_bin(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}/usr/bin:/bin")
    return bin_dir


def test_discover_reads_nvidia_smi(fake_bin: Path) -> None:
    executable(fake_bin / "nvidia-smi", SMI)
    gpus = discover()
    assert [(g.index, g.memory_free_mib) for g in gpus] == [(0, 20000), (1, 80000), (2, 50000)]


def test_no_nvidia_smi_means_no_gpu(fake_bin: Path) -> None:
    assert discover() == []


def test_place_most_free_memory_first() -> None:
    gpus = [Gpu(0, "a", 20000, 80000), Gpu(1, "a", 80000, 80000), Gpu(2, "a", 50000, 80000)]
    assert [[g.index for g in grp] for grp in place(gpus, 1, None)] == [[1], [2], [0]]
    assert [[g.index for g in grp] for grp in place(gpus, 2, None)] == [[1, 2]]
    assert [[g.index for g in grp] for grp in place(gpus, 1, 2)] == [[1], [2]]
    assert place(gpus, 4, None) == []


def settings(tmp_path: Path, **kw) -> Settings:
    return Settings(data_dir=tmp_path / "d", engine="vllm", **kw)


def test_no_vllm_falls_back_to_llamacpp_for_gguf(tmp_path: Path, fake_bin: Path) -> None:
    gguf = tmp_path / "m.gguf"
    shutil.copyfile(embedded_model_path(), gguf)
    engines = build_engines(settings(tmp_path, model_path=gguf, model_trust="any"), tmp_path)
    assert list(engines) == ["m"] and isinstance(engines["m"], LlamaCppEngine)


def test_no_fallback_when_told_so(tmp_path: Path, fake_bin: Path) -> None:
    gguf = tmp_path / "m.gguf"
    shutil.copyfile(embedded_model_path(), gguf)
    with pytest.raises(ConfigError, match="vLLM is not installed"):
        build_engines(settings(tmp_path, model_path=gguf, vllm_fallback=False), tmp_path)


def test_model_directory_without_gpu_is_a_clear_error(tmp_path: Path, fake_bin: Path) -> None:
    executable(fake_bin / "vllm", "#!/bin/sh\nexit 0\n")
    model_dir = tmp_path / "Qwen2.5-7B"
    model_dir.mkdir()
    with pytest.raises(ConfigError, match="no NVIDIA GPU found.*not a GGUF file"):
        build_engines(settings(tmp_path, model_path=model_dir), tmp_path)


def test_tensor_parallel_larger_than_the_machine(tmp_path: Path, fake_bin: Path) -> None:
    executable(fake_bin / "vllm", "#!/bin/sh\nexit 0\n")
    executable(fake_bin / "nvidia-smi", SMI)
    model_dir = tmp_path / "big"
    model_dir.mkdir()
    with pytest.raises(ConfigError, match="tensor parallelism 8 needs that many GPUs"):
        build_engines(settings(tmp_path, model_path=model_dir, vllm_tensor_parallel=8,
                               vllm_fallback=False), tmp_path)


def test_vllm_needs_a_model_path(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="needs --model-path"):
        build_engines(settings(tmp_path), tmp_path)
