#!/usr/bin/env bash
# make bench-store (and the end of make bench): issue 4's store figures.
# A fresh quickstart CA's store is filled with STORE_CERTS issued-certificate
# records through the store's own write path (internal/storefill), then:
#   - the store's size on disk (ca.db after the log is folded), per record;
#   - `hsmca cert show SERIAL` end to end (process start, module and store
#     open, lookup, output), median and max over LOOKUPS runs on serials
#     spread over the fill, with a warm page cache and, if this user may
#     drop the page cache, a cold one.
# Writes bench/store.json and prints a summary.
#
# Knobs: STORE_CERTS (1000000), LOOKUPS (21), BENCH_PORT_BASE (25000),
# HSMCA (bin/hsmca).
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
. scripts/peers.sh

N=${STORE_CERTS:-1000000}
LOOKUPS=${LOOKUPS:-21}
BASE=${BENCH_PORT_BASE:-25000}
HSMCA=${HSMCA:-$ROOT/bin/hsmca}
mkdir -p bench

bench_workdir bench-store

echo "== store: quickstart CA, then $N records" >&2
start_hsmca "$HSMCA" "$WORK" "$((BASE + 400))" "$((BASE + 401))" "127.0.0.1:$((BASE + 453))"
stop_pid "$SERVER_PID"
SERVER_PID=""
CFG=$WORK/demo/ca.yaml
DB=$WORK/demo/ca.db

fill_start=$(date +%s%N)
go run ./internal/storefill -store "$DB" -n "$N" -serials "$WORK/serials.txt"
fill_ms=$(( ($(date +%s%N) - fill_start) / 1000000 ))
size=$(stat -c %s "$DB")
leftover=$(find "$WORK/demo" -maxdepth 1 -name 'ca.db.calog.*' | wc -l)

# lookups SERIALS cold: runs `cert show` on each serial read from stdin
# (with cold=1, after dropping the page cache) and prints the median and
# max wall time in ms.
lookups() {
  local cold=$1 s t0 t1 times=()
  while read -r s; do
    if [ "$cold" = 1 ]; then
      sync
      echo 3 >/proc/sys/vm/drop_caches
    fi
    t0=$(date +%s%N)
    "$HSMCA" cert show "$s" --config "$CFG" >/dev/null
    t1=$(date +%s%N)
    times+=($(( (t1 - t0) / 1000 )))
  done
  printf '%s\n' "${times[@]}" | sort -n | awk '{a[NR]=$1} END {printf "%.1f %.1f\n", a[int((NR+1)/2)]/1000, a[NR]/1000}'
}

# The first lookup after the fill warms the binary and the module files.
"$HSMCA" cert show "$(head -n 1 "$WORK/serials.txt")" --config "$CFG" | head -n 3
read -r warm_med warm_max < <(head -n "$LOOKUPS" "$WORK/serials.txt" | lookups 0)
cold_med=null cold_max=null
if [ -w /proc/sys/vm/drop_caches ]; then
  # Cold: the store's pages come from the disk.
  read -r cold_med cold_max < <(tail -n "$LOOKUPS" "$WORK/serials.txt" | lookups 1)
fi

cat >bench/store.json <<EOF
{"certs": $N, "fill_ms": $fill_ms, "store_bytes": $size, "bytes_per_cert": $((size / N)), "leftover_log_segments": $leftover,
 "cert_show_warm_ms": {"median": $warm_med, "max": $warm_max, "runs": $LOOKUPS},
 "cert_show_cold_ms": {"median": $cold_med, "max": $cold_max, "runs": $LOOKUPS}}
EOF
echo "== store with $N certificates: $((size / 1048576)) MiB ($((size / N)) bytes per certificate), filled in $((fill_ms / 1000)) s"
echo "   hsmca cert show: warm median $warm_med ms (max $warm_max), cold median $cold_med ms (max $cold_max), $LOOKUPS runs each"
echo "bench-store: wrote bench/store.json" >&2
