#!/usr/bin/env bash
# Runs every weft test. The end-to-end tests start the real binaries, so
# they are built first (one release profile for everything). Everything is
# built with the `cuda` feature (--all-features): the CUDA backend, the NCCL
# communicator and the GPU check compile everywhere, and without a GPU their
# tests check the clean failure and report the GPU parts skipped.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/system-deps.sh
scripts/fetch-model.sh
cargo build --release --workspace --all-features --bins
cargo test --release --workspace --all-features "$@"
# The Python clients' view: the openai SDK, grpcio health/reflection,
# /metrics, API keys and the Python example (tests/python).
scripts/test-python.sh
