#!/usr/bin/env bash
# Regenerates the Python code and .pyi stubs for protos/ into server/dualstream/v1.
# `make proto-check` runs this and fails if the committed files differ.
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
python=${PYTHON:-$repo/.venv/bin/python}
out=$repo/server
"$python" -m grpc_tools.protoc \
  -I "$repo/protos" \
  --python_out="$out" \
  --mypy_out="$out" \
  --grpc_python_out="$out" \
  --mypy_grpc_out="$out" \
  --plugin=protoc-gen-mypy="$repo/.venv/bin/protoc-gen-mypy" \
  --plugin=protoc-gen-mypy_grpc="$repo/.venv/bin/protoc-gen-mypy_grpc" \
  "$repo"/protos/dualstream/v1/*.proto
# The generated package needs an __init__ so setuptools and mypy see it.
touch "$out/dualstream/v1/__init__.py"
