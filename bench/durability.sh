#!/usr/bin/env bash
# Acknowledged publishes per fsync mode (single events and batches of 100),
# and recovery time of a journal of 1M events. Herald on CPU 0, the
# generator on CPU 1. Prints markdown rows for docs/BENCHMARKS.md.
#
#   bench/durability.sh [SECONDS]
set -euo pipefail
cd "$(dirname "$0")/.."
SECS=${1:-5}
cargo build --release -q -p herald-server -p herald-bench
HERALD=target/release/herald
BENCH=target/release/herald-bench
PORT=18731
URL=http://127.0.0.1:$PORT
WORK=$(mktemp -d)
trap 'kill $(jobs -p) 2>/dev/null; rm -rf "$WORK"' EXIT

start() { # DATA_DIR SETTINGS...
  local dir=$1; shift
  local args=()
  for s in "$@"; do args+=(--set "$s"); done
  taskset -c 0 "$HERALD" serve --listen 127.0.0.1:$PORT --data-dir "$dir" "${args[@]}" 2>"$WORK/log" &
  PID=$!
  until grep -q "listening on" "$WORK/log" 2>/dev/null; do sleep 0.05; done
}
stop() { kill "$PID"; wait "$PID" 2>/dev/null || true; }
field() { python3 -c "import json,sys; d=json.loads(sys.stdin.readlines()[-1]); print($1)"; }

echo "| fsync | request | events/s | requests/s | p50 ms | p99 ms | max ms |"
echo "|---|---|---|---|---|---|---|"
for mode in always batch never; do
  for shape in single batch100; do
    rm -rf "$WORK/data"; start "$WORK/data" "history.fsync=\"$mode\""
    if [ $shape = single ]; then
      out=$(taskset -c 1 $BENCH publish --pub "$URL/v1/publish?topic={topic}" --connections 32 --seconds "$SECS" --server-pid $PID)
    else
      out=$(taskset -c 1 $BENCH publish --pub "$URL/v1/publish" --json --batch 100 --connections 8 --seconds "$SECS" --server-pid $PID)
    fi
    stop
    echo "$out" | field "'| $mode | $shape | %.0f | %.0f | %.2f | %.2f | %.2f |' % (d['publish']['events_per_sec'], d['publish']['requests_per_sec'], d['publish']['latency_ms']['p50'], d['publish']['latency_ms']['p99'], d['publish']['latency_ms']['max'])"
  done
done

# Recovery: 1M events (1,000 batches of 1,000, 100-byte data) kept in history.
rm -rf "$WORK/data"
start "$WORK/data" "history.max_events_per_topic=1000000" "history.max_age_secs=0" "limits.max_body_bytes=4194304"
python3 - "$URL" <<'PY'
import json, sys, urllib.request
url = sys.argv[1] + "/v1/publish"
body = json.dumps([{"topic": "recovery", "data": "x" * 100}] * 1000).encode()
for _ in range(1000):
    req = urllib.request.Request(url, data=body, headers={"Content-Type": "application/json"})
    urllib.request.urlopen(req).read()
PY
stop
size=$(du -sh "$WORK/data/journal" | cut -f1)
t0=$(date +%s.%N)
start "$WORK/data" "history.max_events_per_topic=1000000" "history.max_age_secs=0"
t1=$(date +%s.%N)
rss=$(grep VmRSS /proc/$PID/status | awk '{print $2}')
stop
echo
echo "recovery: 1,000,000 events ($size journal) read back in $(python3 -c "print('%.2f' % ($t1 - $t0))") s (process start to listening); RSS after $((rss / 1024)) MiB"
