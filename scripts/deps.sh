#!/usr/bin/env bash
# Installs the outside tools hsmca's tests use. Idempotent.
set -euo pipefail
need=()
command -v softhsm2-util >/dev/null 2>&1 || need+=(softhsm2)
command -v pkcs11-tool   >/dev/null 2>&1 || need+=(opensc)
command -v certbot       >/dev/null 2>&1 || need+=(certbot)
command -v openssl       >/dev/null 2>&1 || need+=(openssl)
if [ ${#need[@]} -gt 0 ]; then
  echo "deps: installing ${need[*]}"
  SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO=sudo
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${need[@]}" >/dev/null
fi
# --- begin TesseraCT (issue 8, ct/) ---
# TesseraCT's POSIX binary is the real CT log the ct integration test runs on
# loopback. go install names it after its directory: bin/peers/posix.
(
  cd "$(dirname "$0")/.."
  if [ ! -x bin/peers/posix ]; then
    echo "deps: installing TesseraCT posix v0.1.1 into bin/peers"
    mkdir -p bin/peers
    GOBIN="$PWD/bin/peers" go install github.com/transparency-dev/tesseract/cmd/tesseract/posix@v0.1.1
  fi
)
# --- end TesseraCT ---
# --- begin Pebble (issue 7, loadtest/) ---
# Pebble is the real RFC 8555 server the loadtest integration test runs on
# loopback (Debian's package is the old 2.4).
(
  cd "$(dirname "$0")/.."
  if [ ! -x bin/peers/pebble ]; then
    echo "deps: installing Pebble v2.10.3 into bin/peers"
    mkdir -p bin/peers
    GOBIN="$PWD/bin/peers" go install github.com/letsencrypt/pebble/v2/cmd/pebble@v2.10.3
  fi
)
# --- end Pebble ---
echo "deps: ok (softhsm2, pkcs11-tool, certbot, openssl)"
