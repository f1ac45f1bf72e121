#!/usr/bin/env bash
# Runs weft's Python tests (tests/python): the official openai SDK against
# the OpenAI-compatible HTTP API, gRPC health and reflection, /metrics, API
# keys, and the Python example. They start the real binaries, which must be
# built already (cargo build --release --bins).
#
# Usage: scripts/test-python.sh [PYTEST ARGS...]     (from any directory)
# Env:   WEFT_BIN_DIR=target/release   folder of weft-coordinator and
#                                      weft-worker (relative to the repo root)
#        WEFT_TEST_MODEL=models/...gguf  the model the servers load
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
scripts/python-env.sh
scripts/fetch-model.sh >/dev/null
export WEFT_BIN_DIR="${WEFT_BIN_DIR:-target/release}"
exec .venv/bin/pytest -q tests/python "$@"
