#!/usr/bin/env bash
# The one prepared GPU check (issue 5), in two halves:
#
#   scripts/gpu-check.sh build   here (no GPU needed): builds weft-gpu-check with the
#                                `cuda` feature into .gpu-bin/ (git-ignored, carried to
#                                the device machine; well under 64 MiB)
#   scripts/gpu-check.sh run     on the GPU machine: finds the CUDA libraries (driver,
#                                NVRTC, cuBLAS, NCCL; the pip `nvidia-*` packages
#                                included), then runs weft-gpu-check, which checks every
#                                CUDA kernel against the CPU kernel on fresh random
#                                inputs (outputs poisoned first), measures the
#                                device-to-device copy bandwidth and the cuBLAS bf16
#                                GEMM rate, runs an NCCL world-size-1 all-reduce, and
#                                prints a short table last. Bounded to 7 minutes.
#
# Device tool call (one call, under 8 minutes):
#   run(command="scripts/gpu-check.sh run", carry=[".gpu-bin"], timeout_s=480)
# then copy the table it prints, with the date, into docs/gpu-results.md.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
BIN_DIR="$ROOT/.gpu-bin"

build() {
    cargo build --release --features cuda -p weft-worker --bin weft-gpu-check
    mkdir -p "$BIN_DIR"
    cp "${CARGO_TARGET_DIR:-target}/release/weft-gpu-check" "$BIN_DIR/"
    strip "$BIN_DIR/weft-gpu-check" 2>/dev/null || true
    du -h "$BIN_DIR"/*
    echo "ready: carry .gpu-bin and run 'scripts/gpu-check.sh run' on the device machine"
}

# Adds the folders that hold the CUDA user-space libraries to LD_LIBRARY_PATH:
# the driver's, the toolkit's, and those of pip's nvidia-* wheels (NCCL lives
# only there on the device image).
find_libs() {
    local dirs=() d
    for d in /usr/local/nvidia/lib64 /usr/local/nvidia/lib /usr/local/cuda/lib64 \
             /usr/local/cuda/targets/x86_64-linux/lib; do
        [ -d "$d" ] && dirs+=("$d")
    done
    if command -v python3 >/dev/null; then
        while IFS= read -r d; do [ -n "$d" ] && dirs+=("$d"); done < <(python3 - <<'PY' 2>/dev/null
import glob, os, site
roots = site.getsitepackages() + [site.getusersitepackages()]
for r in roots:
    for lib in sorted(glob.glob(os.path.join(r, "nvidia", "**", "lib"), recursive=True)):
        print(lib)
PY
)
    fi
    # cudarc looks for libX.so, libX.so.<cuda major>, .12 ... .1, but NCCL's
    # soname is libnccl.so.2: give it the plain name in a folder of links.
    local links="${TMPDIR:-/tmp}/weft-cuda-links"
    mkdir -p "$links"
    for d in "${dirs[@]}"; do
        for f in "$d"/libnccl.so.2 "$d"/libnvrtc.so.* "$d"/libcublas.so.* "$d"/libcublasLt.so.*; do
            [ -e "$f" ] || continue
            local base
            base="$(basename "$f" | sed 's/\.so\..*/.so/')"
            [ -e "$links/$base" ] || ln -s "$f" "$links/$base"
        done
    done
    dirs=("$links" "${dirs[@]}")
    local joined
    joined="$(IFS=:; echo "${dirs[*]}")"
    export LD_LIBRARY_PATH="${joined}${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
}

run() {
    [ -x "$BIN_DIR/weft-gpu-check" ] || { echo "no $BIN_DIR/weft-gpu-check: run 'scripts/gpu-check.sh build' here first and carry .gpu-bin" >&2; exit 2; }
    local out="${OUT:-/tmp/weft-gpu-check}"
    mkdir -p "$out"
    {
        echo "== $(date -u +%Y-%m-%dT%H:%M:%SZ) $(uname -n)"
        nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv,noheader || true
        find_libs
        echo "LD_LIBRARY_PATH=$LD_LIBRARY_PATH"
        ls -l "${TMPDIR:-/tmp}/weft-cuda-links" || true
        timeout 420 "$BIN_DIR/weft-gpu-check" --ptx-cache "$out/ptx-cache" "$@"
    } 2>&1 | tee "$out/gpu-check.log"
}

case "${1:-}" in
    build) shift; build "$@" ;;
    run) shift; run "$@" ;;
    *) echo "usage: scripts/gpu-check.sh build|run [weft-gpu-check args]" >&2; exit 2 ;;
esac
