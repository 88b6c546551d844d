#!/usr/bin/env bash
# Installs the pinned code generators of `make proto` into the cache, once, and prints the
# directory to put first on PATH. The versions live in tools/proto/: package.json + lock (buf,
# protoc-gen-es), go.mod + go.sum (protoc-gen-go, protoc-gen-go-grpc), pom.xml (protoc for
# Java). The install directory is named by a hash of those files, so a version bump installs
# afresh and never mixes with an older set; a lock keeps concurrent callers from racing.
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
manifests=$repo/tools/proto
cache=${DUALSTREAM_CACHE:-$HOME/.cache/dualstream}
fingerprint=$(cd "$manifests" && cat package.json package-lock.json go.mod go.sum pom.xml \
  | sha256sum | cut -c1-12)
home=$cache/proto-tools/$fingerprint
bin=$home/bin

say() { echo "proto-tools: $*" >&2; }
require() {
  command -v "$1" >/dev/null || { say "$1 is not on PATH: $2"; exit 1; }
}

if [[ ! -e $home/complete ]]; then
  mkdir -p "$home"
  exec 9>"$home/.lock"
  flock 9
  if [[ ! -e $home/complete ]]; then
    require npm "buf and protoc-gen-es come from npm (Node 20+)"
    require go "protoc-gen-go and protoc-gen-go-grpc are built with go install (Go 1.24+)"
    require mvn "protoc comes from Maven Central (apt-get install maven)"
    rm -rf "$home/npm" "$bin"
    mkdir -p "$home/npm" "$bin"
    say "installing buf and protoc-gen-es (npm, tools/proto/package-lock.json) into $home"
    cp "$manifests/package.json" "$manifests/package-lock.json" "$manifests/.npmrc" "$home/npm/"
    (cd "$home/npm" && npm ci --ignore-scripts --no-audit --no-fund --loglevel=error >&2)
    ln -sf ../npm/node_modules/.bin/buf "$bin/buf"
    ln -sf ../npm/node_modules/.bin/protoc-gen-es "$bin/protoc-gen-es"
    say "installing protoc-gen-go and protoc-gen-go-grpc (go install, tools/proto/go.mod)"
    (cd "$manifests" && GOBIN=$bin GOFLAGS=-mod=readonly go install tool)
    say "installing protoc (Maven Central, tools/proto/pom.xml)"
    # Maven's quiet mode still writes colour resets; its output is shown only if it fails.
    mvn -q -B -f "$manifests/pom.xml" dependency:copy-dependencies \
      -DoutputDirectory="$home/maven" -Dmdep.stripVersion=true >"$home/maven.log" 2>&1 \
      || { cat "$home/maven.log" >&2; exit 1; }
    install -m 0755 "$home/maven/protoc-linux-x86_64.exe" "$bin/protoc"
    "$bin/buf" --version >/dev/null
    "$bin/protoc" --version >/dev/null
    touch "$home/complete"
    say "ready: buf $("$bin/buf" --version), $("$bin/protoc" --version)"
  fi
  exec 9>&-
fi
echo "$bin"
