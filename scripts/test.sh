#!/usr/bin/env bash
# Runs every test: installs the Python references (onnxruntime, onnx) into .venv, then the Rust suite.
set -euo pipefail
cd "$(dirname "$0")/.."

if [ ! -x .venv/bin/python ]; then
  python3 -m venv .venv
fi
.venv/bin/python -m pip install --quiet --disable-pip-version-check -r requirements-test.txt

# The ort backend finds libonnxruntime in this venv's onnxruntime package; tests run Python checks with it.
export VIRTUAL_ENV="$PWD/.venv"
export DEEPPATCH_PYTHON="$PWD/.venv/bin/python"

cargo test --release --locked "$@"
