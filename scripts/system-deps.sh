#!/usr/bin/env bash
# Installs the system tools weft's tests need, when missing (Debian or Ubuntu, as
# root; elsewhere it names what to install and fails):
#   openssl              the test PKI of the mutual-TLS tests (scripts/make-test-certs.sh)
#   etcd                 the server the weft-membership tests start (Debian: etcd-server)
#   protoc + its includes  etcd-client's build script (protobuf-compiler, libprotobuf-dev)
#   ip                   the network namespaces of the multi-host test (iproute2)
# Building and serving alone (`cargo build --release`, the README's first command)
# needs none of them.
set -euo pipefail
need=()
command -v openssl >/dev/null || need+=(openssl)
command -v etcd >/dev/null || need+=(etcd-server)
command -v protoc >/dev/null || need+=(protobuf-compiler)
[ -f /usr/include/google/protobuf/descriptor.proto ] || need+=(libprotobuf-dev)
command -v ip >/dev/null || need+=(iproute2)
[ ${#need[@]} -eq 0 ] && exit 0
if [ "$(id -u)" -ne 0 ] || ! command -v apt-get >/dev/null; then
    echo "system-deps: missing ${need[*]}; install them (Debian: apt-get install ${need[*]})" >&2
    exit 1
fi
echo "system-deps: installing ${need[*]}" >&2
apt-get update -qq
DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null
