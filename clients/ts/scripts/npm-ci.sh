#!/usr/bin/env bash
# Installs clients/ts's pinned dependencies (package-lock.json) into clients/ts/node_modules,
# with npm's download cache under ${DUALSTREAM_CACHE:-~/.cache/dualstream}/npm, and only when
# the lockfile changed since the last install (a stamp in node_modules holds its hash).
set -euo pipefail
cd "$(dirname "$0")/.."
command -v npm >/dev/null || { echo "npm is missing: install Node.js 20 or later (Debian: apt-get install nodejs npm)" >&2; exit 1; }
cache="${DUALSTREAM_CACHE:-$HOME/.cache/dualstream}/npm"
stamp=node_modules/.dualstream-lock-sha256
want="$(sha256sum package-lock.json | cut -d' ' -f1)"
if [[ -f "$stamp" && "$(cat "$stamp")" == "$want" ]]; then
  exit 0
fi
echo "clients/ts: installing the pinned npm dependencies (cache: $cache)"
npm ci --cache "$cache" --prefer-offline --no-audit --no-fund --loglevel=error
echo "$want" > "$stamp"
