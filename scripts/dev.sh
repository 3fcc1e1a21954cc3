#!/usr/bin/env bash
# Set up (or reuse) the virtual environment at .venv/ and run one thing in it.
#   bash scripts/dev.sh demo   install genreflow with CPU FAISS, run the whole demo pipeline
#   bash scripts/dev.sh test   install genreflow with dev tools, lint, type-check, run every test
set -euo pipefail
cd "$(dirname "$0")/.."

what="${1:-}"
case "$what" in
  demo) extras="faiss-cpu" ;;
  test) extras="faiss-cpu,dev" ;;
  *) echo "usage: bash scripts/dev.sh demo|test" >&2; exit 2 ;;
esac

python="${PYTHON:-python3}"
if ! "$python" -c 'import sys; sys.exit(sys.version_info < (3, 11))'; then
  echo "genreflow needs Python >= 3.11 (found: $("$python" --version 2>&1)); set PYTHON=/path/to/python3.11" >&2
  exit 2
fi
if [ ! -x .venv/bin/python ]; then
  "$python" -m venv .venv
fi
pip=(.venv/bin/python -m pip --disable-pip-version-check)
stamp=".venv/.genreflow-$what-$(cat pyproject.toml scripts/constraints.txt scripts/dev.sh | sha1sum | cut -c1-12)"
if [ ! -f "$stamp" ]; then
  # torch first and exact: the CPU wheel, never an open range that pulls a CUDA build.
  "${pip[@]}" install -q -c scripts/constraints.txt torch==2.13.0
  "${pip[@]}" install -q -c scripts/constraints.txt -e ".[$extras]"
  # musicnn's pretrained weights (genreflow.pretrained.musicnn reads its data files, never
  # its code): --no-deps, as its metadata pins TensorFlow and an old numpy.
  "${pip[@]}" install -q --no-deps -c scripts/constraints.txt musicnn
  touch "$stamp"
fi

case "$what" in
  demo)
    exec .venv/bin/genreflow demo "${@:2}"
    ;;
  test)
    .venv/bin/ruff check .
    .venv/bin/ruff format --check .
    .venv/bin/mypy
    # pytest exits 5 when it collected nothing; that is a failure here, like any other non-zero.
    # Two test processes (GENREFLOW_TEST_WORKERS=1: one), each file's tests in one of them:
    # much of a Ray test is spent waiting on process starts, which the other one fills.
    exec .venv/bin/python -m pytest -n "${GENREFLOW_TEST_WORKERS:-2}" --dist loadfile "${@:2}"
    ;;
esac
