#!/usr/bin/env bash
# Regenerates every language's code for protos/ (`make proto`; `make proto-check` runs this
# and fails if the committed files differ):
#   Go          clients/go/gen/dualstream/v1           buf + protoc-gen-go, protoc-gen-go-grpc
#   TypeScript  clients/ts/src/gen/dualstream/v1       buf + protoc-gen-es
#   Java        clients/java/src/main/java/dev/dualstream/v1   buf + protoc's java builtin
#   Python      server/dualstream/v1 (with .pyi stubs) grpc_tools.protoc + mypy-protobuf
# buf's plugins and protoc are the pinned ones of scripts/proto-tools.sh. With --check, it then
# fails if the committed generated code differs from what it generated (`make proto-check`).
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
python=${PYTHON:-$repo/.venv/bin/python}
tools=$("$repo/scripts/proto-tools.sh")
export PATH=$tools:$PATH
cd "$repo"

# Generated directories only (the Java one is the proto's package, beside the hand-written
# client), emptied first so a type or file removed from the proto leaves nothing stale.
generated=(clients/go/gen clients/ts/src/gen clients/java/src/main/java/dev/dualstream/v1)
rm -rf "${generated[@]}"
generated+=(server/dualstream/v1)
buf generate

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

if [[ ${1:-} == --check ]]; then
  # Against the index, so generated code that is staged for the next commit counts as committed.
  git diff --exit-code --stat -- "${generated[@]}" \
    || { echo "generated code is stale: run 'make proto' and commit the result"; exit 1; }
  untracked=$(git ls-files --others --exclude-standard -- "${generated[@]}")
  [[ -z $untracked ]] \
    || { echo "$untracked"; echo "untracked generated files: run 'make proto' and commit them"; exit 1; }
  echo "generated code up to date: ${generated[*]}"
fi
