#!/usr/bin/env bash
# make bench: every package's Go benchmarks (medians over BENCH_COUNT runs,
# ratios against baselines measured in the same run, see bench/pairs.txt),
# then a short `hsmca loadtest acme` against a fresh quickstart CA on
# loopback. Writes bench/results.json and bench/results.txt.
#
# Then scripts/bench-store.sh (store size and `cert show` latency with
# STORE_CERTS certificates, 1000000 by default; STORE_CERTS=0 skips it).
#
# Knobs: BENCH_COUNT (5), BENCH_FILTER (go test -bench regexp, default .),
# BENCH_PKGS (default: every package with benchmarks), LOAD_CLIENTS (16),
# LOAD_DURATION (10s), BENCH_PORT_BASE (25000), HSMCA (bin/hsmca).
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
. scripts/peers.sh

COUNT=${BENCH_COUNT:-5}
FILTER=${BENCH_FILTER:-.}
PKGS=${BENCH_PKGS:-./hsm/... ./ca/... ./acme/... ./server/... ./store/... ./ct/... ./internal/p256verify}
CLIENTS=${LOAD_CLIENTS:-16}
DURATION=${LOAD_DURATION:-10s}
BASE=${BENCH_PORT_BASE:-25000}
HSMCA=${HSMCA:-$ROOT/bin/hsmca}
OUT=bench/out
mkdir -p "$OUT"

bench_workdir bench

echo "== go benchmarks: -count $COUNT, packages: $PKGS" >&2
# Benchmarks that need outside programs (TesseraCT, SoftHSM2) find them via
# make deps; a missing one is reported by its benchmark, not here.
go test -p 1 -run '^$' -bench "$FILTER" -benchmem -count "$COUNT" -timeout 90m $PKGS | tee "$OUT/go-bench.txt"

echo "== loadtest acme: $CLIENTS clients for $DURATION against a fresh quickstart CA" >&2
DNS_ADDR="127.0.0.1:$((BASE + 53))"
HTTP01_PORT=$((BASE + 2))
TLSALPN_PORT=$((BASE + 1))
HTTPS_PORT=$((BASE + 300))
HTTP_PORT=$((BASE + 301))
init_hsmca "$HSMCA" "$WORK" "$HTTPS_PORT" "$HTTP_PORT" "$HTTP01_PORT" "$TLSALPN_PORT" "$DNS_ADDR"
start_hsmca "$HSMCA" "$WORK" "$HTTPS_PORT" "$HTTP_PORT" "$DNS_ADDR"
"$HSMCA" loadtest acme --url "$SERVER_URL" --ca-bundle "$SERVER_CA" --clients "$CLIENTS" --duration "$DURATION" \
  --max-time 2m --http-port "$HTTP01_PORT" --tls-port "$TLSALPN_PORT" --dns-addr "$DNS_ADDR" --json >"$OUT/loadtest.json" || {
  echo "bench: loadtest reported failures (see $OUT/loadtest.json)" >&2
}
rss=$(peak_rss "$SERVER_PID" || echo 0)
stop_pid "$SERVER_PID"
SERVER_PID=""
printf '{"server_peak_rss_kib": %s}\n' "${rss:-0}" >"$OUT/server.json"

go run ./internal/benchreport -pairs bench/pairs.txt -in "$OUT/go-bench.txt" \
  -extra "loadtest=$OUT/loadtest.json" -extra "server=$OUT/server.json" -json bench/results.json | tee bench/results.txt
echo "== loadtest (16 clients, quickstart soft P-256 issuer, durable store)"
cat "$OUT/loadtest.json"
echo "bench: wrote bench/results.json and bench/results.txt" >&2

if [ "${STORE_CERTS:-1000000}" != 0 ]; then
  ./scripts/bench-store.sh
fi
