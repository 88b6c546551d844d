#!/usr/bin/env bash
# Installs what a fresh Debian machine lacks to run dualstream's stack and tests, and says so:
# Debian's redis-server (the stack and the tests run /usr/bin/redis-server) and redis-tools
# (redis-cli, redis-benchmark). Java 17+ and Maven, which run and fetch Kafka, and Go 1.24+,
# which builds Jaeger, are only checked: which JDK and Go to install is the machine owner's choice.
# Idempotent: with everything present it runs no apt-get at all and only says so.
set -euo pipefail

missing_packages=()
[ -x /usr/bin/redis-server ] || missing_packages+=(redis-server)
command -v redis-cli >/dev/null 2>&1 || missing_packages+=(redis-tools)
# openssl: the TypeScript client's TLS test makes its CA and certificate with it.
command -v openssl >/dev/null 2>&1 || missing_packages+=(openssl)

if ((${#missing_packages[@]})); then
  bash "$(dirname "$0")/apt-install.sh" "${missing_packages[@]}"
  # Debian enables a redis-server service on 6379 where systemd runs; `make up` needs that
  # port for its own Redis, and the tests start theirs on free ports.
  if command -v systemctl >/dev/null 2>&1 && systemctl is-active --quiet redis-server 2>/dev/null; then
    as_root=()
    [ "$(id -u)" -eq 0 ] || as_root=(sudo)
    "${as_root[@]}" systemctl disable --now redis-server >/dev/null 2>&1 || true
    echo "disabled the redis-server system service (the stack runs its own Redis)"
  fi
fi

problems=()
if ! command -v java >/dev/null 2>&1; then
  problems+=("java is missing: Kafka 4 needs Java 17+ (apt-get install openjdk-17-jre-headless)")
else
  # `java -version` prints e.g. 'openjdk version "17.0.15" 2025-04-15' (or "1.8.0_402").
  java_major=$(java -version 2>&1 | sed -n 's/.*version "\([0-9]*\).*/\1/p' | head -n1)
  if [ "${java_major:-0}" -lt 17 ]; then
    problems+=("java ${java_major:-?} is too old: Kafka 4 needs Java 17+ (apt-get install openjdk-17-jre-headless)")
  fi
fi
command -v mvn >/dev/null 2>&1 \
  || problems+=("mvn is missing: Kafka's jars are fetched with Maven (apt-get install maven)")
if ! command -v go >/dev/null 2>&1; then
  problems+=("go is missing: Jaeger is built from source with Go 1.24+")
else
  # `go env GOVERSION` prints e.g. go1.26.8.
  go_version=$(go env GOVERSION 2>/dev/null | sed -n 's/^go\([0-9]*\.[0-9]*\).*/\1/p')
  if [ "${go_version%%.*}" != 1 ] || [ "${go_version#*.}" -lt 24 ] 2>/dev/null; then
    problems+=("go ${go_version:-?} is too old: Jaeger is built with Go 1.24+")
  fi
fi
if ! command -v python3 >/dev/null 2>&1; then
  problems+=("python3 is missing: dualstream needs Python 3.11+")
elif ! python3 -c 'import sys; sys.exit(sys.version_info < (3, 11))'; then
  problems+=("python3 is $(python3 -V 2>&1): dualstream needs Python 3.11+")
fi

if ((${#problems[@]})); then
  echo "cannot continue:" >&2
  printf '  - %s\n' "${problems[@]}" >&2
  exit 1
fi
if ((${#missing_packages[@]} == 0)); then
  echo "system dependencies: all present (redis-server, redis-tools, java ${java_major}, mvn, go ${go_version}, python3)"
fi
