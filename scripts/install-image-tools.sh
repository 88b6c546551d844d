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
if [ "$(id -u)" -eq 0 ]; then
  as_root=()
elif command -v sudo >/dev/null 2>&1; then
  as_root=(sudo)
else
  echo "need root (or sudo) to apt-get install ${missing_packages[*]}" >&2
  exit 1
fi
echo "installing Debian packages: ${missing_packages[*]}"
# Other people's apt may hold the lock for a while on a shared machine: wait for it.
"${as_root[@]}" apt-get -o DPkg::Lock::Timeout=600 update -qq
"${as_root[@]}" env DEBIAN_FRONTEND=noninteractive \
  apt-get -o DPkg::Lock::Timeout=600 install -y -qq --no-install-recommends \
  "${missing_packages[@]}" >/dev/null
echo "installed: ${missing_packages[*]}"
