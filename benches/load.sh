#!/usr/bin/env bash
# End-to-end load through the demo: starts `rota demo` (release build) on free
# loopback ports, runs wrk against it, prints req/s and p99, stops the demo.
#
#   benches/load.sh [DURATION_SECONDS] [CONNECTIONS]
#
# For comparisons with HAProxy and nginx use the side-by-side harness instead
# (see BENCHMARKS.md): absolute numbers on a shared machine are noisy.
set -euo pipefail
cd "$(dirname "$0")/.."
duration=${1:-10}
conns=${2:-64}
command -v wrk >/dev/null || { echo "wrk is not installed (apt-get install wrk)" >&2; exit 1; }
cargo build --release --quiet
log=$(mktemp)
trap 'kill "$pid" 2>/dev/null; wait "$pid" 2>/dev/null; rm -f "$log"' EXIT
RUST_LOG=warn target/release/rota demo --listen 127.0.0.1:0 --admin 127.0.0.1:0 >"$log" 2>&1 &
pid=$!
url=""
for _ in $(seq 1 100); do
  url=$(awk '$1 == "balancer" { print $2; exit }' "$log")
  [ -n "$url" ] && break
  sleep 0.1
done
[ -n "$url" ] || { echo "demo did not start:" >&2; cat "$log" >&2; exit 1; }
out=$(wrk -t2 -c"$conns" -d"${duration}s" --latency "$url")
echo "$out"
rps=$(awk '/^Requests\/sec/ { print $2 }' <<<"$out")
p99=$(awk '$1 == "99%" { print $2 }' <<<"$out")
errors=$(awk '/Socket errors|Non-2xx/ { print }' <<<"$out")
echo
echo "rota demo: ${rps} req/s, p99 ${p99}, ${conns} connections, ${duration}s${errors:+ — $errors}"
