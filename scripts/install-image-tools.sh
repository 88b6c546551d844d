#!/usr/bin/env bash
# Installs what building and running the container image needs, from Debian's apt, and says
# so: mmdebstrap (makes the small Debian base), buildah (builds the Dockerfile on it without a
# Docker engine), podman and runc (run the built image). Idempotent: with all present it runs
# no apt-get at all.
set -euo pipefail

missing_packages=()
command -v mmdebstrap >/dev/null 2>&1 || missing_packages+=(mmdebstrap)
command -v buildah >/dev/null 2>&1 || missing_packages+=(buildah)
command -v podman >/dev/null 2>&1 || missing_packages+=(podman)
command -v runc >/dev/null 2>&1 || missing_packages+=(runc)

if ((${#missing_packages[@]} == 0)); then
  echo "image tools: all present (mmdebstrap, buildah, podman, runc)"
  exit 0
fi
bash "$(dirname "$0")/apt-install.sh" "${missing_packages[@]}"
