#!/usr/bin/env bash
# The one prepared GPU check (issue 5), in two halves:
#
#   scripts/gpu-check.sh build   here (no GPU needed): builds weft-gpu-check, weft-worker
#                                (both with the `cuda` feature), weft-coordinator and
#                                weft-load, stripped, into .gpu-bin/ (git-ignored, carried
#                                to the device machine; checked to stay under 60 MiB)
#   scripts/gpu-check.sh run     on the GPU machine: finds the CUDA libraries (driver,
#                                NVRTC, cuBLAS, NCCL; the pip `nvidia-*` packages
#                                included), then runs weft-gpu-check, which checks every
#                                CUDA kernel against the CPU kernel on fresh random
#                                inputs (outputs poisoned first), measures the
#                                device-to-device copy bandwidth and the cuBLAS bf16
#                                GEMM rate, runs an NCCL world-size-1 all-reduce, and
#                                prints a short table last. Then the serving stage
#                                (serve_check below): a real cluster (coordinator and one
#                                worker on cuda:0) serves 16 prompts of a synthetic bf16
#                                checkpoint through weft-load, and its greedy outputs are
#                                compared with a CPU cluster's on the same checkpoint.
#                                The whole run is bounded to about 7 minutes.
#   scripts/gpu-check.sh serve [DEVICE]
#                                the serving stage alone, with the second cluster on
#                                DEVICE (default cuda:0); `serve cpu` runs it CPU against
#                                CPU, so the whole flow can be tried on a machine
#                                without a GPU.
#
# Files under $OUT (default /tmp/weft-gpu-check): gpu-check.log, serve-check.log (the
# serving stage's output, both weft-load JSON reports and the cluster logs), and
# ptx-cache/ (compiled kernels, shared by both halves).
#
# Device tool call (one call, under 8 minutes):
#   run(command="scripts/gpu-check.sh run", carry=[".gpu-bin"], timeout_s=480)
# then copy the table it prints and the serving summary, with the date, into
# docs/gpu-results.md.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
BIN_DIR="$ROOT/.gpu-bin"

# The executables carried to the device machine.
GPU_BINS=(weft-gpu-check weft-worker weft-coordinator weft-load)

build() {
    # One cargo invocation, so every crate is built once with the same
    # features (weft-worker's `cuda` also reaches weft-model and weft-kernels;
    # the coordinator and weft-load have no such feature).
    cargo build --release -p weft-worker -p weft-coordinator -p weft-loadgen \
        --features weft-worker/cuda --bins
    mkdir -p "$BIN_DIR"
    local exe
    for exe in "${GPU_BINS[@]}"; do
        cp "${CARGO_TARGET_DIR:-target}/release/$exe" "$BIN_DIR/"
        strip "$BIN_DIR/$exe" 2>/dev/null || true
    done
    du -h "$BIN_DIR"/*
    du -ch "$BIN_DIR" | tail -n1
    local total_kib
    total_kib="$(du -sk "$BIN_DIR" | cut -f1)"
    if ((total_kib > 60 * 1024)); then
        echo "$BIN_DIR holds ${total_kib} KiB, over the 60 MiB budget (the carried tree is capped at 64 MiB)" >&2
        exit 1
    fi
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
    local rc=0
    {
        echo "== $(date -u +%Y-%m-%dT%H:%M:%SZ) $(uname -n)"
        nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv,noheader || true
        find_libs
        echo "LD_LIBRARY_PATH=$LD_LIBRARY_PATH"
        ls -l "${TMPDIR:-/tmp}/weft-cuda-links" || true
        timeout 420 "$BIN_DIR/weft-gpu-check" --ptx-cache "$out/ptx-cache" "$@"
    } 2>&1 | tee "$out/gpu-check.log" || rc=$?
    # The serving stage runs whatever the first part found.
    serve_check cuda:0 || rc=1
    return "$rc"
}

# shellcheck source=scripts/lib/serve-check.sh
source "$ROOT/scripts/lib/serve-check.sh"

case "${1:-}" in
    build) shift; build "$@" ;;
    run) shift; run "$@" ;;
    serve) shift; serve_check "${1:-cuda:0}" ;;
    *) echo "usage: scripts/gpu-check.sh build | run [weft-gpu-check args] | serve [cpu|cuda:N]" >&2; exit 2 ;;
esac
