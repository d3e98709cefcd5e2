#!/usr/bin/env bash
# Installs and starts the ACME servers hsmca is measured against (issue 7).
#
#   scripts/peers.sh install     install Pebble, step-ca and the step CLI into bin/peers
#
# Sourced by scripts/bench-peers.sh for the start_* functions below. Every
# server listens on 127.0.0.1 only and validates against the load
# generator's stub DNS and challenge servers on loopback.
set -euo pipefail

PEERS_ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
PEERS_BIN="$PEERS_ROOT/bin/peers"
PEBBLE_VERSION=v2.10.3
STEP_VERSION=v0.30.2

peers_install() {
  mkdir -p "$PEERS_BIN"
  if [ ! -x "$PEERS_BIN/pebble" ]; then
    echo "peers: installing Pebble $PEBBLE_VERSION"
    GOBIN="$PEERS_BIN" go install "github.com/letsencrypt/pebble/v2/cmd/pebble@$PEBBLE_VERSION"
  fi
  if [ ! -x "$PEERS_BIN/step-ca" ]; then
    # step-ca's PKCS#11/YubiKey support links against libpcsclite.
    if ! dpkg -s libpcsclite-dev >/dev/null 2>&1; then
      echo "peers: installing libpcsclite-dev (needed to build step-ca)"
      local sudo=""; [ "$(id -u)" -ne 0 ] && sudo=sudo
      $sudo apt-get update -qq
      DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq libpcsclite-dev >/dev/null
    fi
    echo "peers: installing step-ca $STEP_VERSION (a few minutes)"
    GOBIN="$PEERS_BIN" go install "github.com/smallstep/certificates/cmd/step-ca@$STEP_VERSION"
  fi
  if [ ! -x "$PEERS_BIN/step" ]; then
    echo "peers: installing step CLI $STEP_VERSION"
    GOBIN="$PEERS_BIN" go install "github.com/smallstep/cli/cmd/step@$STEP_VERSION"
  fi
  command -v openssl >/dev/null || { echo "peers: openssl is needed (make deps)" >&2; return 1; }
  command -v curl >/dev/null || { echo "peers: curl is needed" >&2; return 1; }
}

# wait_url URL PID [CAFILE]: waits up to 60 s for URL to answer 200 while PID lives.
wait_url() {
  local url=$1 pid=$2 ca=${3:-} i tlsopt=(--insecure)
  [ -n "$ca" ] && tlsopt=(--cacert "$ca")
  for i in $(seq 1 600); do
    kill -0 "$pid" 2>/dev/null || { echo "peers: server (pid $pid) exited while starting" >&2; return 1; }
    if curl -fsS -o /dev/null --max-time 2 "${tlsopt[@]}" "$url" 2>/dev/null; then
      return 0
    fi
    sleep 0.1
  done
  echo "peers: $url did not answer within 60s" >&2
  return 1
}

# stop_pid PID: SIGTERM, then SIGKILL after 15 s.
stop_pid() {
  local pid=$1 i
  kill -TERM "$pid" 2>/dev/null || return 0
  for i in $(seq 1 150); do
    kill -0 "$pid" 2>/dev/null || { wait "$pid" 2>/dev/null || true; return 0; }
    sleep 0.1
  done
  kill -KILL "$pid" 2>/dev/null || true
  wait "$pid" 2>/dev/null || true
}

# bench_workdir NAME: makes a fresh work directory in $WORK and, on exit,
# stops the server whose PID is in $SERVER_PID (if any) and removes $WORK.
bench_workdir() {
  WORK=$(mktemp -d "/tmp/$1.XXXXXX")
  SERVER_PID=""
  trap 'if [ -n "$SERVER_PID" ]; then stop_pid "$SERVER_PID"; fi; rm -rf "$WORK"' EXIT
  trap 'exit 130' INT TERM
}

# peak_rss PID: the process's peak resident set (VmHWM) in KiB.
peak_rss() {
  awk '/^VmHWM:/ {print $2}' "/proc/$1/status" 2>/dev/null || echo 0
}

# listener_cert DIR: a self-signed cert/key for 127.0.0.1 (Pebble's listener).
listener_cert() {
  local dir=$1
  openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 2 \
    -subj "/CN=loadtest listener" -addext "subjectAltName=IP:127.0.0.1,DNS:localhost" \
    -keyout "$dir/key.pem" -out "$dir/cert.pem" >/dev/null 2>&1
  chmod 600 "$dir/key.pem"
}

# start_pebble DIR LISTEN_PORT HTTP01_PORT TLSALPN_PORT DNS_ADDR: starts Pebble
# from loadtest/testdata/pebble-config.json; sets SERVER_PID, SERVER_URL, SERVER_CA.
start_pebble() {
  local dir=$1 port=$2 http=$3 tls=$4 dns=$5
  mkdir -p "$dir"
  [ -f "$dir/cert.pem" ] || listener_cert "$dir"
  jq --arg l "127.0.0.1:$port" --arg c "$dir/cert.pem" --arg k "$dir/key.pem" --argjson h "$http" --argjson t "$tls" \
    '.pebble.listenAddress=$l | .pebble.certificate=$c | .pebble.privateKey=$k | .pebble.httpPort=$h | .pebble.tlsPort=$t' \
    "$PEERS_ROOT/loadtest/testdata/pebble-config.json" > "$dir/pebble-config.json"
  PEBBLE_VA_NOSLEEP=1 PEBBLE_WFE_NONCEREJECT=0 PEBBLE_AUTHZREUSE=0 \
    "$PEERS_BIN/pebble" -config "$dir/pebble-config.json" -dnsserver "$dns" >>"$dir/pebble.log" 2>&1 &
  SERVER_PID=$!
  SERVER_URL="https://127.0.0.1:$port/dir"
  SERVER_CA="$dir/cert.pem"
  wait_url "$SERVER_URL" "$SERVER_PID" "$SERVER_CA"
}

# init_stepca DIR PORT: `step ca init` (standalone, soft keys) plus an ACME
# provisioner named "acme", into DIR/step.
init_stepca() {
  local dir=$1 port=$2
  mkdir -p "$dir"
  (umask 077; head -c 32 /dev/urandom | base64 > "$dir/password")
  STEPPATH="$dir/step" "$PEERS_BIN/step" ca init --deployment-type standalone --name "loadtest step-ca" \
    --dns 127.0.0.1 --address "127.0.0.1:$port" --provisioner admin \
    --password-file "$dir/password" --provisioner-password-file "$dir/password" >"$dir/init.log" 2>&1
  STEPPATH="$dir/step" "$PEERS_BIN/step" ca provisioner add acme --type ACME >>"$dir/init.log" 2>&1
}

# start_stepca DIR HTTP01_PORT TLSALPN_PORT DNS_ADDR: starts step-ca from a
# directory made by init_stepca; sets SERVER_PID, SERVER_URL, SERVER_CA.
start_stepca() {
  local dir=$1 http=$2 tls=$3 dns=$4 addr
  addr=$(jq -r .address "$dir/step/config/ca.json")
  STEPPATH="$dir/step" "$PEERS_BIN/step-ca" "$dir/step/config/ca.json" --password-file "$dir/password" \
    --resolver "$dns" --insecure --acme-http-port "$http" --acme-tls-port "$tls" >>"$dir/step-ca.log" 2>&1 &
  SERVER_PID=$!
  SERVER_URL="https://$addr/acme/acme/directory"
  SERVER_CA="$dir/step/certs/root_ca.crt"
  wait_url "$SERVER_URL" "$SERVER_PID" "$SERVER_CA"
}

# init_hsmca HSMCA DIR HTTPS_PORT HTTP_PORT HTTP01_PORT TLSALPN_PORT DNS_ADDR:
# creates a quickstart CA in DIR/demo, then moves its ACME validation ports
# off 80/443 in ca.yaml.
init_hsmca() {
  local bin=$1 dir=$2 https=$3 http=$4 http01=$5 tls=$6 dns=$7
  mkdir -p "$dir"
  start_hsmca "$bin" "$dir" "$https" "$http" "$dns"
  stop_pid "$SERVER_PID"
  sed -i -E "s/^([[:space:]]*)http01_port:.*/\1http01_port: $http01/; s/^([[:space:]]*)tlsalpn01_port:.*/\1tlsalpn01_port: $tls/" "$dir/demo/ca.yaml"
  grep -q "http01_port: $http01" "$dir/demo/ca.yaml" || { echo "peers: could not set http01_port in $dir/demo/ca.yaml" >&2; return 1; }
  # Pebble and step-ca as started here have no rate limits; hsmca's
  # defaults (50 requests/s per account, 200/s per address) would throttle
  # a load test from one address. HSMCA_RATE_LIMITS=keep leaves them on.
  if [ "${HSMCA_RATE_LIMITS:-off}" = off ]; then
    if grep -q "rate_limits:" "$dir/demo/ca.yaml"; then
      echo "peers: $dir/demo/ca.yaml already sets rate_limits; leaving them" >&2
    else
      sed -i -E '/^acme:/a\  rate_limits:\n    account_rate: -1\n    ip_rate: -1\n    new_order_rate: -1' "$dir/demo/ca.yaml"
    fi
  fi
}

# start_hsmca HSMCA DIR HTTPS_PORT HTTP_PORT DNS_ADDR: runs `hsmca quickstart`
# on DIR/demo; sets SERVER_PID, SERVER_URL, SERVER_CA.
start_hsmca() {
  local bin=$1 dir=$2 https=$3 http=$4 dns=$5
  "$bin" quickstart --dir "$dir/demo" --https-addr "127.0.0.1:$https" --http-addr "127.0.0.1:$http" \
    --resolver "$dns" >>"$dir/hsmca.log" 2>&1 &
  SERVER_PID=$!
  SERVER_URL="https://127.0.0.1:$https/acme/directory"
  SERVER_CA="$dir/demo/root.pem"
  # root.pem appears during the first run; wait for the directory itself.
  wait_url "$SERVER_URL" "$SERVER_PID"
}

if [ "${BASH_SOURCE[0]}" = "$0" ]; then
  case "${1:-}" in
    install) peers_install ;;
    *) echo "usage: scripts/peers.sh install" >&2; exit 2 ;;
  esac
fi
