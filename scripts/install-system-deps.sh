#!/usr/bin/env bash
# Installs what a fresh Debian machine lacks to run dualstream's stack and tests, and says so.
# Idempotent: with everything present it only prints that.
set -euo pipefail

missing_packages=()
command -v redis-server >/dev/null 2>&1 || missing_packages+=(redis-server)
command -v redis-cli >/dev/null 2>&1 || missing_packages+=(redis-tools)

if ((${#missing_packages[@]})); then
  echo "installing Debian packages: ${missing_packages[*]}"
  if [ "$(id -u)" -ne 0 ]; then sudo=sudo; else sudo=; fi
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends \
    "${missing_packages[@]}" >/dev/null
  # Debian starts a redis-server service on 6379 after installing; the stack runs its own.
  if command -v systemctl >/dev/null 2>&1 && systemctl is-active --quiet redis-server 2>/dev/null; then
    $sudo systemctl disable --now redis-server >/dev/null 2>&1 || true
  fi
fi

problems=()
if ! command -v java >/dev/null 2>&1; then
  problems+=("java is missing: Kafka needs a Java 17+ JDK (apt-get install openjdk-17-jdk-headless)")
else
  java_major=$(java -version 2>&1 | sed -n 's/.*version "\([0-9]*\).*/\1/p' | head -n1)
  if [ "${java_major:-0}" -lt 17 ]; then
    problems+=("java ${java_major} is too old: Kafka 4 needs Java 17+")
  fi
fi
command -v mvn >/dev/null 2>&1 || problems+=("mvn is missing: Kafka's jars are fetched with Maven (apt-get install maven)")
command -v python3 >/dev/null 2>&1 || problems+=("python3 is missing: dualstream needs Python 3.11+")
if command -v python3 >/dev/null 2>&1 && ! python3 -c 'import sys; sys.exit(sys.version_info < (3, 11))'; then
  problems+=("python3 is $(python3 -V 2>&1): dualstream needs Python 3.11+")
fi

if ((${#problems[@]})); then
  printf 'cannot continue:\n' >&2
  printf '  - %s\n' "${problems[@]}" >&2
  exit 1
fi
((${#missing_packages[@]})) || echo "system packages: all present (redis-server, java, mvn, python3)"
