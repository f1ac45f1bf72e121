#!/usr/bin/env bash
# Runs every weft test. The end-to-end tests start the real binaries, so
# they are built first (one release profile for everything).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/fetch-model.sh
cargo build --release --workspace --bins
cargo test --release --workspace "$@"
