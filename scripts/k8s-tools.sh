#!/usr/bin/env bash
# Builds the pinned Kubernetes tools of the manifest checks into the cache, once, and prints
# the directory they are in: kustomize (renders k8s/) and kubeconform (validates the result).
# The versions live in tools/k8s/go.mod + go.sum and come from the Go module proxy; the
# install directory is named by a hash of those files, so a version bump builds afresh; a
# lock keeps concurrent callers from racing.
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
manifests=$repo/tools/k8s
cache=${DUALSTREAM_CACHE:-$HOME/.cache/dualstream}
fingerprint=$(cat "$manifests/go.mod" "$manifests/go.sum" | sha256sum | cut -c1-12)
home=$cache/k8s-tools/$fingerprint
bin=$home/bin

say() { echo "k8s-tools: $*" >&2; }

if [[ ! -e $home/complete ]]; then
  mkdir -p "$home"
  exec 9>"$home/.lock"
  flock 9
  if [[ ! -e $home/complete ]]; then
    command -v go >/dev/null \
      || { say "go is not on PATH: kustomize and kubeconform are built with go install (Go 1.26+)"; exit 1; }
    rm -rf "$bin"
    say "building kustomize and kubeconform (go install, tools/k8s/go.mod) into $home"
    (cd "$manifests" && GOBIN=$bin GOFLAGS=-mod=readonly go install tool)
    touch "$home/complete"
    say "ready: kustomize $("$bin/kustomize" version) and kubeconform in $bin"
  fi
  exec 9>&-
fi
echo "$bin"
