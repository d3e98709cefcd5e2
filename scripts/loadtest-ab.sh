#!/usr/bin/env bash
# Alternated A/B load test of two hsmca builds on this machine:
#   scripts/loadtest-ab.sh OLD_BINARY NEW_BINARY [PAIRS]
# For each of PAIRS rounds (5), and for each binary in turn: a fresh
# quickstart CA on loopback (stub resolver, http-01 on a high port, rate
# limits off as in scripts/bench.sh), `hsmca loadtest acme` with LOAD_CLIENTS
# (16) clients for LOAD_DURATION (10s), and the server's CPU time over the
# load (utime+stime from /proc). Prints one line per run and the medians of
# orders/s and server CPU per order, and the median of the per-round CPU
# ratios NEW/OLD. The two builds run alternately so that load which comes
# and goes on a shared machine falls on both.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/peers.sh
old=${1:?usage: loadtest-ab.sh OLD_BINARY NEW_BINARY [PAIRS]}
new=${2:?usage: loadtest-ab.sh OLD_BINARY NEW_BINARY [PAIRS]}
pairs=${3:-5}
clients=${LOAD_CLIENTS:-16}
duration=${LOAD_DURATION:-10s}
base=${BENCH_PORT_BASE:-26000}
bench_workdir loadtest-ab
tck=$(getconf CLK_TCK)
results=$WORK/results.txt
: >"$results"

cpu_ticks() { awk '{print $14+$15}' "/proc/$1/stat"; }

run_one() { # label binary
  local label=$1 bin=$2 dir="$WORK/$1-$RANDOM"
  local https=$((base + 300)) http=$((base + 301)) http01=$((base + 2)) tls=$((base + 1)) dns="127.0.0.1:$((base + 53))"
  init_hsmca "$bin" "$dir" "$https" "$http" "$http01" "$tls" "$dns"
  start_hsmca "$bin" "$dir" "$https" "$http" "$dns"
  local t0 t1 rss
  t0=$(cpu_ticks "$SERVER_PID")
  "$bin" loadtest acme --url "$SERVER_URL" --ca-bundle "$SERVER_CA" --clients "$clients" --duration "$duration" \
    --max-time 2m --http-port "$http01" --tls-port "$tls" --dns-addr "$dns" --json >"$dir/lt.json" 2>/dev/null || true
  t1=$(cpu_ticks "$SERVER_PID")
  rss=$(peak_rss "$SERVER_PID" || echo 0)
  stop_pid "$SERVER_PID"
  SERVER_PID=""
  python3 - "$label" "$dir/lt.json" "$t0" "$t1" "$tck" "$rss" >>"$results" <<'PY'
import json, sys
label, path, t0, t1, tck, rss = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5]), sys.argv[6]
d = json.load(open(path))
n = max(d.get("orders", 0), 1)
print(label, d.get("orders", 0), d.get("failed_orders", 0), d.get("orders_per_sec", 0), d.get("p50_ms", 0), d.get("p99_ms", 0),
      round((t1 - t0) * 1000 / tck / n, 3), rss)
PY
  tail -1 "$results" | awk '{printf "%-4s orders %s (failed %s)  %s orders/s  p50 %s ms  p99 %s ms  server CPU %s ms/order  peak RSS %s KiB\n", $1,$2,$3,$4,$5,$6,$7,$8}'
}

for i in $(seq "$pairs"); do
  run_one old "$old"
  run_one new "$new"
done
python3 - "$results" <<'PY'
import statistics, sys
rows = [l.split() for l in open(sys.argv[1]) if l.strip()]
old = [r for r in rows if r[0] == "old"]
new = [r for r in rows if r[0] == "new"]
med = lambda rs, i: statistics.median(float(r[i]) for r in rs)
print(f"old: median {med(old, 3):.1f} orders/s, {med(old, 6):.2f} ms server CPU per order")
print(f"new: median {med(new, 3):.1f} orders/s, {med(new, 6):.2f} ms server CPU per order")
ratios = [float(n[6]) / float(o[6]) for o, n in zip(old, new)]
print("per-round CPU ratios new/old:", " ".join(f"{r:.2f}" for r in ratios), f"(median {statistics.median(ratios):.2f})")
PY
