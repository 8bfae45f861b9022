#!/usr/bin/env bash
# A local run for docs/src/operate/dashboard.png (the book shows it on
# the Dashboard page): mde-local over the simulated tenant,
# the events/ samples sent a few times (plus a few badly signed requests),
# its EMF lines captured and rendered by docs/render_dashboard.py.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build -q -p mde-local
log=$(mktemp)
port=${PORT:-9077}
target/debug/mde-local --port "$port" >"$log" 2>/dev/null & pid=$!
trap 'kill $pid 2>/dev/null || true' EXIT
until curl -s -o /dev/null "http://127.0.0.1:$port/"; do sleep 0.2; done
url="http://127.0.0.1:$port"
for round in 1 2 3 4 5 6; do
  for f in generic generic-dry-run jira pagerduty servicenow defender-incident; do
    target/debug/mde-local send "events/$f.json" --url "$url" >/dev/null || true
  done
  for _ in $(seq "$round"); do
    curl -s -o /dev/null -X POST "$url/v1/offboard" -H 'content-type: application/json' \
      -H 'webhook-id: msg_bad' -H "webhook-timestamp: $(date +%s)" -H 'webhook-signature: v1,AAAA' \
      -d '{"ticket":"INC1","comment":"c","devices":["laptop-17.contoso.com"]}'
  done
  sleep 2
done
kill $pid; wait $pid 2>/dev/null || true
python3 docs/render_dashboard.py "$log" -o docs/src/operate/dashboard.png
