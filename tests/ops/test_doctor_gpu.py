"""GPU checks with a stand-in `nvidia-smi` on PATH (as the managed-vLLM tests do) and
stand-in installed distributions of vLLM and torch (dist-info metadata and torch's
version.py, as pip leaves them), checked against the shipped compatibility matrix."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from autoglm.ops.doctor import gpu
from tests.ops.support import by_id, ctx, executable, install_dist


def smi(driver: str, cuda: str, name: str = "NVIDIA H100 80GB HBM3", cc: str = "9.0") -> str:
    """An nvidia-smi that answers the CSV query and prints its usual header otherwise."""
    return f"""#!/bin/sh
case "$1" in
  --query-gpu=*)
    cat <<CSV
0, {name}, {driver}, 81559, {cc}
1, {name}, {driver}, 81559, {cc}
CSV
    ;;
  *)
    cat <<'TXT'
+-----------------------------------------------------------------------------------------+
| NVIDIA-SMI {driver}              Driver Version: {driver}      CUDA Version: {cuda}     |
|-----------------------------------------+------------------------+----------------------+
TXT
    ;;
esac
"""


@pytest.fixture
def fake_bin(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}/usr/bin:/bin")
    return bin_dir


@pytest.fixture
def site(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    path = tmp_path / "site"
    path.mkdir()
    monkeypatch.syspath_prepend(str(path))
    return path


def stack(site: Path, vllm: str | None, torch: str | None, torch_cuda: str | None,
          vllm_requires: list[str] = ()) -> None:
    if vllm:
        install_dist(site, "vllm", vllm, requires=list(vllm_requires))
    if torch:
        cuda = repr(torch_cuda) if torch_cuda else "None"
        install_dist(site, "torch", torch, files={
            "torch/__init__.py": "raise ImportError('the doctor must not import torch')\n",
            "torch/version.py": f"__version__ = '{torch}'\ncuda: Optional[str] = {cuda}\n"})


def test_no_nvidia_smi_is_not_applicable(tmp_path: Path, fake_bin: Path) -> None:
    found = gpu.gpu(ctx(tmp_path))
    assert [r.status for r in found] == ["skip"] and "nvidia-smi not on PATH" in found[0].detail


def test_no_gpu_with_engine_vllm(tmp_path: Path, fake_bin: Path) -> None:
    r = gpu.gpu(ctx(tmp_path, engine="vllm"))[0]
    assert r.status == "warn" and "fall back to llama.cpp" in r.detail
    r = gpu.gpu(ctx(tmp_path, engine="vllm", vllm_fallback=False))[0]
    assert r.status == "fail" and "install the NVIDIA driver" in r.remedy


def test_old_driver_fails_against_the_matrix_with_the_fix(tmp_path: Path, fake_bin: Path,
                                                         site: Path) -> None:
    executable(fake_bin / "nvidia-smi", smi("470.82.01", "11.4"))
    stack(site, "0.10.1", "2.7.1", "12.8")
    found = by_id(gpu.gpu(ctx(tmp_path, engine="vllm")))
    assert found["gpu.driver"].status == "pass"
    assert found["gpu.driver"].data["driver"] == "470.82.01"
    assert len(found["gpu.driver"].data["gpus"]) == 2
    assert found["gpu.vllm"].status == "pass"
    r = found["gpu.cuda"]
    assert r.status == "fail"
    assert "runs CUDA up to 11.4" in r.detail and "CUDA 12.8" in r.detail
    assert "upgrade the NVIDIA driver to 570.26 or newer" in r.remedy


def test_torch_that_vllm_was_not_built_against(tmp_path: Path, fake_bin: Path,
                                               site: Path) -> None:
    executable(fake_bin / "nvidia-smi", smi("570.86.15", "12.8"))
    stack(site, "0.10.1", "2.5.1", "12.4")
    r = by_id(gpu.gpu(ctx(tmp_path, engine="vllm")))["gpu.vllm"]
    assert r.status == "fail" and "built against torch 2.7.1" in r.detail
    assert "pip install 'torch==2.7.1'" in r.remedy and "vllm==0.10.1" in r.remedy


def test_cpu_only_torch_under_vllm(tmp_path: Path, fake_bin: Path, site: Path) -> None:
    executable(fake_bin / "nvidia-smi", smi("570.86.15", "12.8"))
    stack(site, "0.9.2", "2.7.0+cpu", None)
    r = by_id(gpu.gpu(ctx(tmp_path, engine="vllm")))["gpu.vllm"]
    assert r.status == "fail" and "CPU-only" in r.detail
    assert "download.pytorch.org/whl/cu128" in r.remedy


def test_everything_matching(tmp_path: Path, fake_bin: Path, site: Path) -> None:
    executable(fake_bin / "nvidia-smi", smi("570.86.15", "12.8"))
    stack(site, "0.10.1", "2.7.1+cu128", "12.8")
    found = gpu.gpu(ctx(tmp_path, engine="vllm"))
    assert [r.status for r in found] == ["pass", "pass", "pass"], [r.detail for r in found]
    assert "NVIDIA H100 80GB HBM3" in found[0].detail and "cc 9.0" in found[0].detail


def test_older_minor_cuda_is_a_warning(tmp_path: Path, fake_bin: Path, site: Path) -> None:
    executable(fake_bin / "nvidia-smi", smi("550.54.15", "12.4"))
    stack(site, "0.10.1", "2.7.1", "12.8")
    r = by_id(gpu.gpu(ctx(tmp_path, engine="vllm")))["gpu.cuda"]
    assert r.status == "warn" and "minor-version compatibility" in r.detail
    assert "570.26" in r.remedy


def test_gpu_without_vllm_is_checked_against_the_recommended_release(
        tmp_path: Path, fake_bin: Path, site: Path) -> None:
    executable(fake_bin / "nvidia-smi", smi("470.82.01", "11.4"))
    found = by_id(gpu.gpu(ctx(tmp_path)))  # engine llamacpp: nothing fails
    assert found["gpu.vllm"].status == "skip"
    assert found["gpu.cuda"].status == "warn" and "(recommended)" in found["gpu.cuda"].detail


def test_vllm_outside_the_matrix_uses_its_own_torch_pin(tmp_path: Path, fake_bin: Path,
                                                        site: Path) -> None:
    executable(fake_bin / "nvidia-smi", smi("580.65.06", "13.0"))
    stack(site, "0.99.0", "2.9.0", "13.0", vllm_requires=["torch==2.10.0", "numpy"])
    r = by_id(gpu.gpu(ctx(tmp_path, engine="vllm")))["gpu.vllm"]
    assert r.status == "fail" and "torch 2.10.0" in r.detail and "not in compat.yaml" in r.detail


def test_old_gpu_for_vllm(tmp_path: Path, fake_bin: Path, site: Path) -> None:
    executable(fake_bin / "nvidia-smi", smi("535.54.03", "12.2", name="Tesla P100", cc="6.0"))
    r = by_id(gpu.gpu(ctx(tmp_path, engine="vllm")))["gpu.driver"]
    assert r.status == "fail" and "compute capability 7.0" in r.detail


def test_broken_driver(tmp_path: Path, fake_bin: Path) -> None:
    executable(fake_bin / "nvidia-smi", "#!/bin/sh\necho \"NVIDIA-SMI has failed because it "
               "couldn't communicate with the NVIDIA driver.\"\nexit 9\n")
    r = gpu.gpu(ctx(tmp_path))[0]
    assert r.status == "warn" and "couldn't communicate" in r.detail and "dmesg" in r.remedy
    assert gpu.gpu(ctx(tmp_path, engine="vllm"))[0].status == "fail"


def test_the_matrix_is_consistent() -> None:
    m = gpu.matrix()
    assert gpu.vllm_row(str(m["recommended"])) is not None
    for row in m["vllm"]:
        assert row["cuda"] in m["cuda_driver"], row
        assert gpu.ver(row["torch"])
    assert gpu.vllm_row("0.10.1.post1")["torch"] == "2.7.1"
    assert gpu.vllm_row("0.7.3+cu118")["torch"] == "2.5.1"
    assert gpu.vllm_row("0.5.0") is None
