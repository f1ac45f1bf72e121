#!/usr/bin/env bash
# Creates the Python virtualenv of weft's Python tests and examples, .venv/
# in the repository root (git-ignored), and installs the pinned packages of
# tests/python/requirements.txt into it.
#
# Idempotent: an existing .venv/ is kept, and pip runs only when the
# requirements changed since the last successful install (a hash of the
# file is kept in .venv/).
#
# Usage: scripts/python-env.sh          (from any directory)
# Env:   PYTHON=python3                 interpreter that creates the venv
#                                       (3.9 or newer; the pins are tested
#                                       with 3.11)
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="$ROOT/.venv"
REQ="$ROOT/tests/python/requirements.txt"
STAMP="$VENV/.weft-requirements.sha256"
PYTHON="${PYTHON:-python3}"

log() { echo "python-env: $*" >&2; }

if [ ! -x "$VENV/bin/python" ]; then
    "$PYTHON" - <<'PY' || { log "Python 3.9 or newer is needed (PYTHON=$PYTHON)"; exit 1; }
import sys
sys.exit(0 if sys.version_info >= (3, 9) else 1)
PY
    log "creating $VENV with $("$PYTHON" --version 2>&1)"
    "$PYTHON" -m venv "$VENV"
fi

want="$(sha256sum "$REQ" | cut -d' ' -f1)"
have="$(cat "$STAMP" 2>/dev/null || true)"
if [ "$want" != "$have" ]; then
    log "installing $(grep -cE '^[A-Za-z]' "$REQ") pinned packages from tests/python/requirements.txt"
    rm -f "$STAMP"
    "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check \
        --no-input -r "$REQ"
    echo "$want" > "$STAMP"
else
    log "$VENV is up to date"
fi
