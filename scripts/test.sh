#!/usr/bin/env bash
# Runs every weft test. The end-to-end tests start the real binaries, so
# they are built first (one release profile for everything).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/fetch-model.sh
cargo build --release --workspace --bins
cargo test --release --workspace "$@"
# The Python clients' view: the openai SDK, grpcio health/reflection,
# /metrics, API keys and the Python example (tests/python).
scripts/test-python.sh
