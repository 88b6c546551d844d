#!/usr/bin/env bash
# apt-get install PACKAGES as root (or through sudo), saying what it installs. Waits for the
# dpkg lock (others on the machine may be running apt) rather than failing at once.
set -euo pipefail
(($#)) || exit 0
if [ "$(id -u)" -eq 0 ]; then
  as_root=()
elif command -v sudo >/dev/null 2>&1; then
  as_root=(sudo)
else
  echo "need root (or sudo) to apt-get install $*" >&2
  exit 1
fi
echo "installing Debian packages: $*"
"${as_root[@]}" apt-get -o DPkg::Lock::Timeout=600 update -qq
"${as_root[@]}" env DEBIAN_FRONTEND=noninteractive \
  apt-get -o DPkg::Lock::Timeout=600 install -y -qq --no-install-recommends "$@" >/dev/null
echo "installed: $*"
