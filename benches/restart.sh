#!/usr/bin/env bash
# Target 6 of the performance issue: time from starting `strata serve` after
# a SIGKILL to its first answered request, after a burst of writes.
#
#   benches/restart.sh [RECORDS] [PARTITIONS] [FLUSH]
#
# Defaults: 10,000,000 records of 1 KiB (10 GB) into 100 partitions, flush
# `never` (the worst case for recovery: nothing is fsynced before a roll).
# Run it from the repository root after `cargo build --release`; it uses a
# temp dir under ./data (the disk the broker would use) and removes it.
set -euo pipefail
records=${1:-10000000}
partitions=${2:-100}
flush=${3:-never}
bin=${STRATA_BIN:-target/release/strata}
port=${STRATA_BENCH_PORT:-50391}
url=http://127.0.0.1:$port
mkdir -p data
dir=$(mktemp -d data/restart-bench.XXXXXX)
pid=
cleanup() { [ -n "$pid" ] && kill "$pid" 2>/dev/null; wait 2>/dev/null; rm -rf "$dir"; }
trap cleanup EXIT

start() {
  "$bin" serve --data-dir "$dir" --listen 127.0.0.1:$port >"$dir.$1.log" 2>&1 &
  pid=$!
}
ready_ms() {
  local t0=$1
  until "$bin" topic list --server $url >/dev/null 2>&1; do
    kill -0 "$pid" 2>/dev/null || { echo "broker exited:"; cat "$dir.$2.log"; exit 1; }
    sleep 0.005
  done
  echo $(( ($(date +%s%N) - t0) / 1000000 ))
}

start first
ready_ms "$(date +%s%N)" first >/dev/null
echo "[restart] writing $records records of 1 KiB into $partitions partitions (flush $flush)"
"$bin" bench produce --server $url --topic restart --partitions "$partitions" --producers 8 \
  --batch 1000 --records "$records" --flush "$flush" 2>&1 | tr '\r' '\n' | grep 'produce:'
kill -9 "$pid"
wait "$pid" 2>/dev/null || true
echo "[restart] SIGKILLed; $(du -sh "$dir" | cut -f1) on disk; restarting"
t0=$(date +%s%N)
start second
ms=$(ready_ms "$t0" second)
logs=$(grep -c 'recovered log after unclean shutdown' "$dir.second.log" || true)
slowest=$(grep -o 'elapsed_ms=[0-9]*' "$dir.second.log" | cut -d= -f2 | sort -n | tail -1)
echo "restart: ready in $ms ms; $logs logs recovered, slowest ${slowest:-0} ms"
rm -f "$dir.first.log" "$dir.second.log"
