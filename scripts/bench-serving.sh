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

log() { echo "bench-serving: $*" >&2; }

MODEL="$(scripts/fetch-model.sh)"
LLAMA_BIN="$(scripts/build-llamacpp.sh)"
log "building weft (release)"
cargo build --release -q
for exe in weft-coordinator weft-worker weft-load; do
  [[ -x "$BIN/$exe" ]] || { log "missing $BIN/$exe after the build"; exit 1; }
done

# A TCP port nobody listens on right now.
free_port() {
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'
}

SERVER_PID=""
# Stops the running server: SIGTERM to it, then SIGKILL to its whole process
# group (it was started with setsid) if it has not exited after 15 s.
stop_server() {
  [[ -n "$SERVER_PID" ]] || return 0
  kill -TERM "$SERVER_PID" 2>/dev/null || true
  for _ in $(seq 150); do
    kill -0 "$SERVER_PID" 2>/dev/null || break
    sleep 0.1
  done
  kill -KILL -- "-$SERVER_PID" 2>/dev/null || true
  wait "$SERVER_PID" 2>/dev/null || true
  SERVER_PID=""
}
trap stop_server EXIT

# wait_for DESCRIPTION TIMEOUT_S COMMAND...: polls COMMAND every 0.2 s while
# the server lives.
wait_for() {
  local what="$1" timeout="$2"; shift 2
  local deadline=$((SECONDS + timeout))
  until "$@"; do
    if ! kill -0 "$SERVER_PID" 2>/dev/null; then log "$what: server exited"; return 1; fi
    if ((SECONDS >= deadline)); then log "$what: not ready after ${timeout}s"; return 1; fi
    sleep 0.2
  done
}

weft_ready() { grep -qs "weft-coordinator ready: gRPC API on" "$1"; }
http_ok() { [[ "$(curl -s -o /dev/null -w '%{http_code}' "$1")" == 200 ]]; }

start_weft() {
  local c="$1" port="$2" cport
  cport="$(free_port)"
  setsid "$BIN/weft-coordinator" --model "$MODEL" --tp 1 --local-workers \
    --listen "127.0.0.1:$port" --cluster-listen "127.0.0.1:$cport" --http-listen 127.0.0.1:0 --max-num-seqs 64 \
    --worker-threads "$THREADS" \
    >"$OUT/weft-c$c.stdout" 2>"$OUT/weft-c$c.stderr" &
  SERVER_PID=$!
  wait_for "weft (c=$c)" 180 weft_ready "$OUT/weft-c$c.stdout"
}

start_llama() {
  local c="$1" port="$2"
  # shellcheck disable=SC2086 # LLAMA_EXTRA_ARGS is split into words on purpose
  LD_LIBRARY_PATH="$LLAMA_BIN${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}" setsid "$LLAMA_BIN/llama-server" \
    -m "$MODEL" --host 127.0.0.1 --port "$port" -t "$THREADS" -np "$c" -c $((c * 512)) \
    --no-webui $LLAMA_EXTRA_ARGS >"$OUT/llama-c$c.log" 2>&1 &
  SERVER_PID=$!
  wait_for "llama-server (c=$c)" 180 http_ok "http://127.0.0.1:$port/health"
}

# load NAME C TARGET: one weft-load run; its report lands in $OUT/NAME-cC.json.
load() {
  local name="$1" c="$2" target="$3" requests
  requests=$((c * 4 < 16 ? 16 : c * 4))
  "$BIN/weft-load" --target "$target" --concurrency "$c" --requests "$requests" \
    --warmup 2 --max-tokens "$MAX_TOKENS" --max-duration-s "$RUN_TIMEOUT_S" \
    --unique-prompts --json "$OUT/$name-c$c.json" || log "$name c=$c: weft-load failed"
}

echo "machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs)"
echo "model:   $MODEL"
read -r load1 _ </proc/loadavg
echo "load:    $load1 (1-min load average before the runs)"
if python3 -c "import sys; sys.exit(0 if float('$load1') > 0.5 * $(nproc) else 1)"; then
  echo "WARNING: the machine is busy; llama.cpp suffers from other load far more than weft," \
    "so the ratios below overstate weft" >&2
fi
for c in $CONCURRENCIES; do
  port="$(free_port)"
  if start_weft "$c" "$port"; then
    load weft "$c" "grpc://127.0.0.1:$port"
  fi
  stop_server
  stats="$(sed 's/\x1b\[[0-9;]*m//g' "$OUT/weft-c$c.stderr" | grep 'serving stats' | tail -n1 || true)"
  if [[ -n "$stats" ]]; then echo "weft c=$c last scheduler stats: $stats"; fi

  port="$(free_port)"
  if start_llama "$c" "$port"; then
    load llama "$c" "http://127.0.0.1:$port"
  fi
  stop_server
done

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
