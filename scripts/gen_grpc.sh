#!/usr/bin/env bash
# Generate the gRPC Python code from the published .proto:
#   bash scripts/gen_grpc.sh [OUT_DIR]     (default: src/autoglm/rpc/gen, the committed copy)
# Needs grpcio-tools (the `test` extra); the interpreter is $PYTHON, else .venv/bin/python.
# tests/unit/test_rpc_codegen.py regenerates into a temporary directory and compares byte
# for byte, so the committed code cannot drift from the .proto.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
py="${PYTHON:-$root/.venv/bin/python}"
out="$(mkdir -p "${1:-$root/src/autoglm/rpc/gen}" && cd "${1:-$root/src/autoglm/rpc/gen}" && pwd)"

# Paths relative to the proto root: the descriptor's file name is autoglm/v1/inference.proto
# (what reflection serves and what clients import), and no local path ends up in the code.
# grpc_tools.protoc adds the well-known types (google/protobuf/struct.proto) itself.
cd "$root/src/autoglm/rpc/proto"
"$py" -m grpc_tools.protoc -I . \
  --python_out="$out" --pyi_out="$out" --grpc_python_out="$out" \
  autoglm/v1/inference.proto

# protoc's Python plugins import the messages by the proto's own path
# (`from autoglm.v1 import inference_pb2`), which is not where they live in our package;
# a relative import works wherever the generated package sits.
"$py" - "$out/autoglm/v1/inference_pb2_grpc.py" <<'PY'
import sys
from pathlib import Path

path = Path(sys.argv[1])
old = "from autoglm.v1 import inference_pb2 as"
text = path.read_text(encoding="utf-8")
if old not in text:
    sys.exit(f"{path}: expected import not found; check the generator's output")
path.write_text(text.replace(old, "from . import inference_pb2 as"), encoding="utf-8")
PY
