#!/usr/bin/env bash
# Shows the publish path end to end on the stack `make up` started: a live subscriber on two
# sources, a publisher writing to them, and the records as Kafka holds them.
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
bin=$repo/.venv/bin
out=$(mktemp)
trap 'kill "$subscriber" 2>/dev/null || true; rm -f "$out"' EXIT

echo "== subscriber: dualstream subscribe user:octocat repo:octocat/hello"
"$bin/dualstream" subscribe user:octocat repo:octocat/hello --limit 4 >"$out" 2>&1 &
subscriber=$!
for _ in $(seq 50); do grep -q subscribed "$out" 2>/dev/null && break; sleep 0.1; done

echo "== publisher: dualstream publish (4 events)"
"$bin/dualstream" publish user:octocat --type user.starred --data '{"repo":"hello"}' \
  --content-type application/json --count 2
"$bin/dualstream" publish repo:octocat/hello --type repo.pushed --data '{"commits":3}' \
  --content-type application/json --count 2
wait "$subscriber" || true

echo "== what the subscriber saw (ids and Kafka positions, never the payload)"
cat "$out"
echo "== the same events in Kafka (payload and CloudEvents headers)"
"$bin/python" -m stack.localstack tail --count 4
echo
echo "The stack keeps running: try 'dualstream subscribe user:octocat' in another terminal."
echo "'make down' stops it."
