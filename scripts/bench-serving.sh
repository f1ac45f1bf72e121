#!/usr/bin/env bash
# Serving throughput, side by side in one run: weft (TP=1, local worker) and
# llama.cpp's llama-server on the same GGUF and the same cores, loaded by
# weft-load at several concurrencies (closed loop, 64 output tokens each,
# EOS ignored, greedy, distinct prompts so no prefix cache helps either).
# Prints a table of output tokens/s and TTFT p50 for both.
#
# Usage: scripts/bench-serving.sh
# Env:   CONCURRENCIES="1 8 32"   concurrencies to run
#        MAX_TOKENS=64            output tokens per request
#        THREADS=2                compute threads of each server (llama-server -t,
#                                 weft --worker-threads)
#        RUN_TIMEOUT_S=90         cap of each weft-load run (requests still in
#                                 flight then count as cancelled)
#        LLAMA_EXTRA_ARGS=...     more llama-server flags (e.g. "--poll 0")
#
# Run it on an otherwise idle machine: with THREADS equal to the core count,
# any other load slows llama.cpp (whose threads spin-wait for each other)
# far more than weft, and the ratio then says little.
#        BENCH_OUT=DIR            keep logs and JSON reports there (default: a
#                                 fresh folder under /tmp, printed at the end)
#        CARGO_TARGET_DIR         honoured, as by cargo
#        REQUESTS_PER_C=4, MIN_REQUESTS=16, WARMUP=2
#                                 measured requests per run: max(C * 4, 16),
#                                 after 2 warm-up ones (scripts/lib/bench-common.sh)
set -euo pipefail
cd "$(dirname "$0")/.."

CONCURRENCIES="${CONCURRENCIES:-1 8 32}"
MAX_TOKENS="${MAX_TOKENS:-64}"
THREADS="${THREADS:-2}"
RUN_TIMEOUT_S="${RUN_TIMEOUT_S:-90}"
LLAMA_EXTRA_ARGS="${LLAMA_EXTRA_ARGS:-}"
OUT="${BENCH_OUT:-$(mktemp -d "${TMPDIR:-/tmp}/weft-bench-serving.XXXXXX")}"
mkdir -p "$OUT"
BIN="${CARGO_TARGET_DIR:-target}/release"
# shellcheck source=scripts/lib/bench-common.sh
source scripts/lib/bench-common.sh
trap stop_server EXIT

MODEL="$(scripts/fetch-model.sh)"
LLAMA_BIN="$(scripts/build-llamacpp.sh)"
log "building weft (release)"
cargo build --release -q
for exe in weft-coordinator weft-worker weft-load; do
  [[ -x "$BIN/$exe" ]] || { log "missing $BIN/$exe after the build"; exit 1; }
done

print_header
for c in $CONCURRENCIES; do
  serve_both "$c"
done

# shellcheck disable=SC2086 # one argument per concurrency
python3 - "$OUT" $CONCURRENCIES <<'PY'
import json, os, sys
out, concs = sys.argv[1], sys.argv[2:]

def report(name, c):
    try:
        with open(os.path.join(out, f"{name}-c{c}.json")) as f:
            return json.load(f)
    except (OSError, ValueError):
        return None

def fmt(v, spec, unit=""):
    return "-" if v is None else format(v, spec) + unit

def get(r, *keys):
    for k in keys:
        if r is None:
            return None
        r = r.get(k)
    return r

def ok(r):
    return f"{r['requests']['ok']}/{r['config']['requests']}" if r else "-"

print()
print(f"{'conc':>4}  {'weft tok/s':>10}  {'llama tok/s':>11}  {'ratio':>6}  "
      f"{'weft TTFT p50':>13}  {'llama TTFT p50':>14}  {'weft ok':>7}  {'llama ok':>8}")
for c in concs:
    w, l = report("weft", c), report("llama", c)
    wt, lt = get(w, "output_tokens_per_s"), get(l, "output_tokens_per_s")
    ratio = wt / lt if wt and lt else None
    wf, lf = get(w, "ttft_ms", "p50"), get(l, "ttft_ms", "p50")
    print(f"{c:>4}  {fmt(wt, '.1f'):>10}  {fmt(lt, '.1f'):>11}  {fmt(ratio, '.2f', 'x'):>6}  "
          f"{fmt(wf, '.1f', ' ms'):>13}  {fmt(lf, '.1f', ' ms'):>14}  {ok(w):>7}  {ok(l):>8}")
PY
echo
echo "logs and JSON reports: $OUT"
