#!/usr/bin/env bash
# Shows the publish path end to end on the stack `make up` started: a live subscriber on two
# sources, a publisher writing to them, the records as Kafka holds them, and the last event's
# trace as the stack's Jaeger holds it.
# JAEGER_QUERY_URL (default http://127.0.0.1:16686) is where that Jaeger answers.
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
bin=$repo/.venv/bin
out=$(mktemp)
jaeger=${JAEGER_QUERY_URL:-http://127.0.0.1:16686}
started_ns=$(date +%s%N)
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
echo "== the last event's trace in Jaeger: its publish and its delivery to the subscriber"
"$bin/python" -m stack.jaeger show --query-url "$jaeger" --service dualstream \
  --operation dualstream.v1.EventService/Publish --since-ns "$started_ns" --min-spans 4
echo
echo "The stack keeps running: try 'dualstream subscribe user:octocat' in another terminal."
echo "'make down' stops it."
