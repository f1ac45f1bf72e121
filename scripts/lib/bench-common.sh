# shellcheck shell=bash
# Shared pieces of the side-by-side benchmark scripts (bench-serving.sh,
# bench-vs-llamacpp.sh): server start/stop/wait, one weft-load run, the
# machine header. Source it from the repository root after setting:
#
#   BIN               folder of weft's release binaries
#   MODEL             the GGUF both servers serve
#   LLAMA_BIN         folder of llama.cpp's binaries (build-llamacpp.sh)
#   OUT               folder for logs and JSON reports
#   THREADS           compute threads of each server
#   MAX_TOKENS        output tokens per request
#   RUN_TIMEOUT_S     cap of each weft-load run
#   LLAMA_EXTRA_ARGS  more llama-server flags (split into words)
#
# Optional: BENCH_TAG (log prefix, default: the script's name),
# REQUESTS_PER_C / MIN_REQUESTS (measured requests of a run at concurrency C:
# max(C * REQUESTS_PER_C, MIN_REQUESTS); default 4 and 16), WARMUP (warm-up
# requests, default 2), BENCH_SHOW_CMDS=1 (print each server and weft-load
# command line before running it). The caller installs `trap stop_server EXIT`.

BENCH_TAG="${BENCH_TAG:-$(basename "$0" .sh)}"
REQUESTS_PER_C="${REQUESTS_PER_C:-4}"
MIN_REQUESTS="${MIN_REQUESTS:-16}"
WARMUP="${WARMUP:-2}"
BENCH_SHOW_CMDS="${BENCH_SHOW_CMDS:-0}"

log() { echo "$BENCH_TAG: $*" >&2; }

# show_cmd WORD...: prints a command line, shell-quoted, when BENCH_SHOW_CMDS=1.
show_cmd() {
  [[ "$BENCH_SHOW_CMDS" == 1 ]] || return 0
  local q
  printf -v q '%q ' "$@"
  echo "\$ ${q% }"
}

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

# start_weft C PORT: weft-coordinator (TP=1, local worker) serving gRPC on
# PORT; logs in $OUT/weft-cC.{stdout,stderr}.
start_weft() {
  local c="$1" port="$2" cport
  cport="$(free_port)"
  local cmd=("$BIN/weft-coordinator" --model "$MODEL" --tp 1 --local-workers
    --listen "127.0.0.1:$port" --cluster-listen "127.0.0.1:$cport" --http-listen 127.0.0.1:0
    --max-num-seqs 64 --worker-threads "$THREADS")
  show_cmd "${cmd[@]}"
  setsid "${cmd[@]}" >"$OUT/weft-c$c.stdout" 2>"$OUT/weft-c$c.stderr" &
  SERVER_PID=$!
  wait_for "weft (c=$c)" 180 weft_ready "$OUT/weft-c$c.stdout"
}

# start_llama C PORT: llama-server with C slots of 512 tokens each on PORT;
# log in $OUT/llama-cC.log.
start_llama() {
  local c="$1" port="$2"
  local extra=()
  # shellcheck disable=SC2206 # LLAMA_EXTRA_ARGS is split into words on purpose
  [[ -z "$LLAMA_EXTRA_ARGS" ]] || extra=($LLAMA_EXTRA_ARGS)
  local cmd=("$LLAMA_BIN/llama-server" -m "$MODEL" --host 127.0.0.1 --port "$port"
    -t "$THREADS" -np "$c" -c $((c * 512)) --no-webui "${extra[@]}")
  show_cmd "LD_LIBRARY_PATH=$LLAMA_BIN" "${cmd[@]}"
  LD_LIBRARY_PATH="$LLAMA_BIN${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}" setsid "${cmd[@]}" \
    >"$OUT/llama-c$c.log" 2>&1 &
  SERVER_PID=$!
  wait_for "llama-server (c=$c)" 180 http_ok "http://127.0.0.1:$port/health"
}

# load NAME C TARGET: one closed-loop weft-load run at concurrency C; its
# report lands in $OUT/NAME-cC.json.
load() {
  local name="$1" c="$2" target="$3" requests
  requests=$((c * REQUESTS_PER_C < MIN_REQUESTS ? MIN_REQUESTS : c * REQUESTS_PER_C))
  local cmd=("$BIN/weft-load" --target "$target" --concurrency "$c" --requests "$requests"
    --warmup "$WARMUP" --max-tokens "$MAX_TOKENS" --max-duration-s "$RUN_TIMEOUT_S"
    --unique-prompts --json "$OUT/$name-c$c.json")
  show_cmd "${cmd[@]}"
  "${cmd[@]}" || log "$name c=$c: weft-load failed"
}

# weft_stats C: prints the last `serving stats` line of weft's log at C.
weft_stats() {
  local stats
  stats="$(sed 's/\x1b\[[0-9;]*m//g' "$OUT/weft-c$1.stderr" 2>/dev/null | grep 'serving stats' | tail -n1 || true)"
  if [[ -n "$stats" ]]; then echo "weft c=$1 last scheduler stats: $stats"; fi
}

# print_header: machine, model and the 1-min load average, with a warning
# when the machine is busy.
print_header() {
  echo "machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs)"
  echo "model:   $MODEL"
  local load1
  read -r load1 _ </proc/loadavg
  echo "load:    $load1 (1-min load average before the runs)"
  if python3 -c "import sys; sys.exit(0 if float('$load1') > 0.5 * $(nproc) else 1)"; then
    echo "WARNING: the machine is busy; llama.cpp suffers from other load far more than weft," \
      "so the ratios below overstate weft" >&2
  fi
}

# serve_both C: weft then llama-server at concurrency C, each loaded by
# weft-load (reports in $OUT/weft-cC.json and $OUT/llama-cC.json).
serve_both() {
  local c="$1" port
  port="$(free_port)"
  if start_weft "$c" "$port"; then
    load weft "$c" "grpc://127.0.0.1:$port"
  fi
  stop_server
  weft_stats "$c"

  port="$(free_port)"
  if start_llama "$c" "$port"; then
    load llama "$c" "http://127.0.0.1:$port"
  fi
  stop_server
}
