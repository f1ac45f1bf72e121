#!/usr/bin/env bash
# Makes a test PKI for weft's mutual TLS on the cluster API, with openssl:
#   ca.pem                    the cluster CA (--tls-ca everywhere)
#   coordinator.{pem,key}     the coordinator (--tls-cert/--tls-key; workers
#                             pin coordinator.pem with --coordinator-cert)
#   worker.{pem,key}          a worker (signed by the CA)
#   etcd.{pem,key}            etcd's server certificate (--etcd-ca is ca.pem;
#                             coordinator and workers use their own as
#                             etcd client certificates)
#   rogue-ca.pem, rogue.{pem,key}
#                             a certificate from another CA, for negative tests
# Every leaf is valid for 127.0.0.1 and localhost (plus the names given in
# SAN_EXTRA, e.g. "DNS:coord.weft.svc,IP:10.0.0.5"), for server and client
# use, with P-256 keys, for 30 days. For tests and trials only: a real
# deployment gets its certificates from its own CA (cert-manager, Vault, ...).
#
# Usage: scripts/make-test-certs.sh DIR
set -euo pipefail
DIR="${1:?usage: make-test-certs.sh DIR}"
SAN="IP:127.0.0.1,DNS:localhost${SAN_EXTRA:+,$SAN_EXTRA}"
mkdir -p "$DIR"
cd "$DIR"
umask 077

key() { openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out "$1" 2>/dev/null; }

ca() { # NAME CN
  key "$1.key"
  openssl req -x509 -new -key "$1.key" -sha256 -days 30 -subj "/CN=$2" \
    -addext "basicConstraints=critical,CA:TRUE" \
    -addext "keyUsage=critical,keyCertSign,cRLSign" -out "$1.pem"
}

leaf() { # NAME CN CA
  key "$1.key"
  openssl req -new -key "$1.key" -subj "/CN=$2" -out "$1.csr"
  cat >"$1.ext" <<EXT
basicConstraints=critical,CA:FALSE
keyUsage=critical,digitalSignature
extendedKeyUsage=serverAuth,clientAuth
subjectAltName=$SAN
EXT
  openssl x509 -req -in "$1.csr" -CA "$3.pem" -CAkey "$3.key" -CAcreateserial \
    -days 30 -sha256 -extfile "$1.ext" -out "$1.pem" 2>/dev/null
  rm -f "$1.csr" "$1.ext"
}

ca ca "weft test cluster CA"
leaf coordinator weft-coordinator ca
leaf worker weft-worker ca
leaf etcd etcd ca
ca rogue-ca "some other CA"
leaf rogue weft-worker rogue-ca
rm -f ./*.srl
chmod 644 ./*.pem
echo "$DIR"
