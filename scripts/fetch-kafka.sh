#!/usr/bin/env bash
# Fetches Apache Kafka's jars with Maven into ${DUALSTREAM_CACHE:-~/.cache/dualstream}, once.
# The same as `make kafka-jars`; the stack and the test fixtures also fetch on first use.
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
cd "$repo"
exec "${PYTHON:-$repo/.venv/bin/python}" -m stack.localstack fetch
