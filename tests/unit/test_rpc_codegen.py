"""The committed gRPC code is exactly what scripts/gen_grpc.sh makes from the .proto."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
GEN = ROOT / "src/autoglm/rpc/gen/autoglm/v1"
FILES = ("inference_pb2.py", "inference_pb2.pyi", "inference_pb2_grpc.py")


def test_generated_code_matches_the_proto(tmp_path: Path) -> None:
    env = {**os.environ, "PYTHON": sys.executable}
    r = subprocess.run(["bash", str(ROOT / "scripts/gen_grpc.sh"), str(tmp_path)], env=env,
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    for name in FILES:
        fresh = (tmp_path / "autoglm/v1" / name).read_bytes()
        assert fresh == (GEN / name).read_bytes(), (
            f"{name} differs from what scripts/gen_grpc.sh generates now: run "
            "`bash scripts/gen_grpc.sh` and commit the result")


def test_generated_code_imports_from_its_own_package() -> None:
    from autoglm.rpc.gen.autoglm.v1 import inference_pb2, inference_pb2_grpc

    assert inference_pb2_grpc.autoglm_dot_v1_dot_inference__pb2 is inference_pb2
    # the descriptor keeps the proto's published path (what reflection serves)
    assert inference_pb2.DESCRIPTOR.name == "autoglm/v1/inference.proto"
    assert inference_pb2.DESCRIPTOR.package == "autoglm.v1"
