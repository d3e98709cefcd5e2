#!/usr/bin/env bash
# Measures full ACME orders (new order → http-01 → finalize → download) per
# second against hsmca, Pebble and step-ca on this machine with the same load
# generator, alternating servers (A B C A B C ...) so that drift in the
# machine's load hits every server alike (issue 7, DESIGN.md §7).
#
#   make bench-peers                          # 16 clients, 3 rounds, 10 s each
#   BENCH_CLIENTS="1 16 64" make bench-peers  # the chart's concurrency levels
#
# Knobs (environment): BENCH_CLIENTS (default "16"), BENCH_ROUNDS (3),
# BENCH_DURATION (10s), BENCH_MAXTIME (30s hard cap per run),
# BENCH_SERVERS ("hsmca pebble step-ca"), BENCH_PORT_BASE (24000),
# HSMCA (bin/hsmca). Every server is started fresh for each run from a
# copy of a template made once, listens on 127.0.0.1 only and validates
# against the generator's stub DNS and http-01 server on loopback.
#
# Writes bench/peers.json (every run and the medians), bench/peers.txt (the
# table), bench/peers-runs/ (each run's report) and docs/peers.svg (orders/s vs clients per server). Stops everything
# it started.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
. scripts/peers.sh

CLIENTS=${BENCH_CLIENTS:-16}
ROUNDS=${BENCH_ROUNDS:-3}
DURATION=${BENCH_DURATION:-10s}
MAXTIME=${BENCH_MAXTIME:-30s}
SERVERS=${BENCH_SERVERS:-hsmca pebble step-ca}
BASE=${BENCH_PORT_BASE:-24000}
HSMCA=${HSMCA:-$ROOT/bin/hsmca}

DNS_ADDR="127.0.0.1:$((BASE + 53))"
HTTP01_PORT=$((BASE + 2))
TLSALPN_PORT=$((BASE + 1))
PEBBLE_PORT=$((BASE + 100))
STEPCA_PORT=$((BASE + 200))
HSMCA_HTTPS=$((BASE + 300))
HSMCA_HTTP=$((BASE + 301))

bench_workdir bench-peers
# Each run's report is kept (bench/peers-runs/SERVER_cN_rR.json and .rss)
# so that the table and chart can be redrawn with `loadtest peers`.
RUNS=bench/peers-runs
mkdir -p "$RUNS" bench docs
rm -f "$RUNS"/*.json "$RUNS"/*.rss

peers_install

# The generator: `hsmca loadtest acme` and this standalone build are the same
# package with the same flags; the standalone one builds even when the rest
# of the tree does not.
LOADGEN="$ROOT/bin/peers/loadtest"
go build -o "$LOADGEN" ./loadtest/cmd/loadtest

servers=()
for s in $SERVERS; do
  case $s in
    hsmca)
      if [ -x "$HSMCA" ] && "$HSMCA" quickstart --help >/dev/null 2>&1; then
        servers+=(hsmca)
      else
        echo "bench-peers: skipping hsmca: $HSMCA quickstart is not available (make build)" >&2
      fi ;;
    pebble|step-ca) servers+=("$s") ;;
    *) echo "bench-peers: unknown server $s" >&2; exit 2 ;;
  esac
done

# Templates, made once and copied for every run.
for s in "${servers[@]}"; do
  case $s in
    step-ca) init_stepca "$WORK/tpl-step-ca" "$STEPCA_PORT" ;;
    hsmca)
      init_hsmca "$HSMCA" "$WORK/tpl-hsmca" "$HSMCA_HTTPS" "$HSMCA_HTTP" "$HTTP01_PORT" "$TLSALPN_PORT" "$DNS_ADDR"
      SERVER_PID="" ;;
    pebble) mkdir -p "$WORK/tpl-pebble"; listener_cert "$WORK/tpl-pebble" ;;
  esac
done

echo "bench-peers: servers ${servers[*]}; clients $CLIENTS; $ROUNDS rounds of $DURATION (cap $MAXTIME); work dir $WORK"
for c in $CLIENTS; do
  for r in $(seq 1 "$ROUNDS"); do
    for s in "${servers[@]}"; do
      run="$WORK/run-$s-c$c-r$r"
      rm -rf "$run"; cp -a "$WORK/tpl-$s" "$run"
      case $s in
        pebble) start_pebble "$run" "$PEBBLE_PORT" "$HTTP01_PORT" "$TLSALPN_PORT" "$DNS_ADDR" ;;
        step-ca) start_stepca "$run" "$HTTP01_PORT" "$TLSALPN_PORT" "$DNS_ADDR" ;;
        hsmca) start_hsmca "$HSMCA" "$run" "$HSMCA_HTTPS" "$HSMCA_HTTP" "$DNS_ADDR" ;;
      esac
      out="$RUNS/${s}_c${c}_r${r}.json"
      # Exit status 1 means some orders failed or were cut off by the cap;
      # the report says so and the summary shows it.
      "$LOADGEN" acme --url "$SERVER_URL" --ca-bundle "$SERVER_CA" --clients "$c" --duration "$DURATION" \
        --max-time "$MAXTIME" --http-port "$HTTP01_PORT" --tls-port "$TLSALPN_PORT" --dns-addr "$DNS_ADDR" \
        --json >"$out" 2>"$run/loadtest.err" || true
      peak_rss "$SERVER_PID" >"${out%.json}.rss"
      stop_pid "$SERVER_PID"; SERVER_PID=""
      if ! jq -e .orders "$out" >/dev/null 2>&1; then
        echo "bench-peers: $s c=$c round $r produced no report:" >&2
        tail -n 5 "$run/loadtest.err" >&2
        rm -f "$out" "${out%.json}.rss"
        continue
      fi
      printf 'bench-peers: %-8s clients %3d round %d: %8.2f orders/s  p99 %8.1f ms  peak RSS %6d KiB  failed %d  unfinished %d  (%s)\n' \
        "$s" "$c" "$r" "$(jq .orders_per_sec "$out")" "$(jq .p99_ms "$out")" "$(cat "${out%.json}.rss")" \
        "$(jq .failed_orders "$out")" "$(jq .unfinished "$out")" "$(jq -r .stopped "$out")"
      rm -rf "$run"
    done
  done
done

machine="$(nproc) CPUs, $(awk -F': ' '/model name/ {print $2; exit}' /proc/cpuinfo), $(go env GOVERSION)"
"$LOADGEN" peers --runs "$RUNS" --out bench/peers.json --svg docs/peers.svg \
  --command "BENCH_CLIENTS=\"$CLIENTS\" BENCH_ROUNDS=$ROUNDS BENCH_DURATION=$DURATION make bench-peers" \
  --machine "$machine" | tee bench/peers.txt
echo "bench-peers: wrote bench/peers.json, bench/peers.txt, docs/peers.svg"
