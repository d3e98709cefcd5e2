#!/usr/bin/env bash
# A whole key ceremony with nothing but the hsmca binary:
#   module init (root and issuing partitions, 3-of-5 custodians each)
#   → root → two intermediates → root CRL → ca.yaml for `hsmca cert` and
#   `hsmca ca serve` → the server's TLS certificate.
#
# Usage: testdata/ceremony/run.sh OUTDIR
# The binary is $HSMCA (default: hsmca on the PATH; a relative path is taken
# from the directory run.sh is started in). OUTDIR must not exist or be
# empty. Afterwards OUTDIR holds root.pem, intermediate-1.pem,
# intermediate-2.pem, root-crl.pem, shares/ (one directory per partition,
# one file per custodian: in a real ceremony each file goes to its custodian
# now), transcript.txt, ca.yaml and tls/ (the server's certificate and key).
# `hsmca ca serve --config OUTDIR/ca.yaml` then serves the root's CRL and
# certificate at the URLs the intermediates name (127.0.0.1:8080).
set -euo pipefail

out=${1:?usage: run.sh OUTDIR}
HSMCA=${HSMCA:-hsmca}
# The script changes directory below: a relative binary path must not
# change meaning (a bare name is looked up on the PATH).
case $HSMCA in
*/*) HSMCA=$(cd "$(dirname "$HSMCA")" && pwd)/$(basename "$HSMCA") ;;
esac
here=$(cd "$(dirname "$0")" && pwd)

mkdir -p "$out"
if [ -n "$(ls -A "$out")" ]; then
  echo "run.sh: $out is not empty; a ceremony never overwrites" >&2
  exit 2
fi
cd "$out"
mkdir -p ceremonies
cp "$here"/root.yaml "$here"/intermediate-1.yaml "$here"/intermediate-2.yaml "$here"/root-crl.yaml ceremonies/

step() { printf '\n== %s\n' "$*" | tee -a transcript.txt; }

step "module init: partition root (per-operation, 3 of 5)"
"$HSMCA" hsm init --module module --partition root --shares 5 --threshold 3 --policy per-operation --out shares/root | tee -a transcript.txt
step "module init: partition issuing (online, 3 of 5)"
"$HSMCA" hsm init --module module --partition issuing --shares 5 --threshold 3 --policy online --out shares/issuing | tee -a transcript.txt

# Three custodians of each partition present their shares. Different
# custodians on purpose: any three of five form the quorum.
root_q=(--share shares/root/share-1.txt --share shares/root/share-3.txt --share shares/root/share-5.txt)
issuing_q=(--share shares/issuing/share-2.txt --share shares/issuing/share-3.txt --share shares/issuing/share-4.txt)

step "ceremony: root"
"$HSMCA" ceremony run ceremonies/root.yaml --module module "${root_q[@]}" | tee -a transcript.txt
for i in 1 2; do
  step "ceremony: intermediate-$i"
  "$HSMCA" ceremony run ceremonies/intermediate-$i.yaml --module module "${root_q[@]}" "${issuing_q[@]}" | tee -a transcript.txt
done
step "ceremony: root CRL"
"$HSMCA" ceremony run ceremonies/root-crl.yaml --module module "${root_q[@]}" | tee -a transcript.txt

step "module status after the ceremony (everything sealed)"
"$HSMCA" hsm status --module module | tee -a transcript.txt
step "audit log"
"$HSMCA" hsm audit verify --module module | tee -a transcript.txt

# The URLs are the ones the intermediates name (ceremonies/intermediate-*.yaml):
# `ca serve` publishes the root's CRL and certificate there (crl_files,
# issuer_files), and the intermediates' own under their issuer names.
cat > ca.yaml <<'YAML'
# Written by testdata/ceremony/run.sh. Paths are relative to this file.
# Reference: docs/serve.md.
module: module
store: ca.db
ca:
  default_issuer: intermediate-1
  issuers:
    - name: intermediate-1
      certificate: intermediate-1.pem
      chain: root.pem
      partition: issuing
      key: intermediate-1
    - name: intermediate-2
      certificate: intermediate-2.pem
      chain: root.pem
      partition: issuing
      key: intermediate-2
  urls:
    crl_base: http://127.0.0.1:8080/crl
    aia_base: http://127.0.0.1:8080/aia
    ocsp: http://127.0.0.1:8080/ocsp
server:
  https_addr: 127.0.0.1:8443
  http_addr: 127.0.0.1:8080
  admin_socket: admin.sock
  tls_cert: tls/server.pem
  tls_key: tls/server.key
  issuing_partition: issuing
  crl_files:
    root: root-crl.pem
  issuer_files:
    root: root.pem
YAML

step "server TLS certificate (server profile, key in tls/server.key, mode 0600)"
"$HSMCA" ceremony server-cert --config ca.yaml --name localhost --name 127.0.0.1 "${issuing_q[@]}" | tee -a transcript.txt

step "done: $(pwd)"
ls -1 | tee -a transcript.txt
