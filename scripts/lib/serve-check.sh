# shellcheck shell=bash
# The serving stage of scripts/gpu-check.sh (sourced by it; uses its BIN_DIR
# and find_libs):
#
#   serve_check DEVICE
#
# 1. `weft-gpu-check write-serve-fixture` writes a synthetic bf16 Llama
#    checkpoint with a tokenizer.json, and 16 prompts (1 to 136 tokens, 24
#    output tokens each) as weft-load's jsonl dataset.
# 2. A CPU cluster (weft-coordinator --tp 1 --local-workers, one weft-worker)
#    serves them one at a time; weft-load --record-expected keeps its greedy
#    outputs.
# 3. The same cluster with --worker-device DEVICE serves them 8 at a time;
#    weft-load --check compares every output with the CPU's.
# 4. A summary: requests ok/failed, first token equal for X/16, whole output
#    equal for Y/16, where the outputs first differ.
#
# The stage FAILS when a request fails, a cluster does not start, or the first
# generated token differs for more than a quarter of the prompts. Later
# tokens may differ legitimately: the GPU computes in bf16, the CPU in f32
# over bf16 weights, and a random-weight model has near-tied logits.
#
# Output goes to the terminal and $OUT/serve-check.log; the log then gets both
# weft-load JSON reports and the cluster logs (one file, since few files come
# back from the device machine). Every step is bounded: the stage ends by
# SERVE_DEADLINE_S seconds after the script's start (default 440) and lasts
# at most SERVE_MAX_S (default 330); it is skipped with less than 120 s left.

SERVE_DEADLINE_S="${SERVE_DEADLINE_S:-440}"
SERVE_MAX_S="${SERVE_MAX_S:-330}"
SERVE_CONCURRENCY=8
# Blocks of 16 tokens in each worker's K/V pool (both clusters alike; a GPU
# worker would otherwise size its pool from device memory).
SERVE_KV_BLOCKS=512

CLUSTER_PID=""
CLUSTER_ADDR=""
SERVE_END=0

serve_log() { echo "serve check: $*"; }

# Seconds left before the stage's end, at most $1.
serve_left() {
    local left=$((SERVE_END - SECONDS))
    if ((left > $1)); then left=$1; fi
    if ((left < 1)); then left=1; fi
    echo "$left"
}

# start_cluster NAME DEVICE TMP: a TP-1 cluster whose local worker runs on
# DEVICE, every listener on a port the kernel picks; its log (coordinator and
# worker) in TMP/NAME.log. Sets CLUSTER_PID (a `timeout` that ends it at the
# stage's end at the latest) and CLUSTER_ADDR (host:port of the gRPC API).
start_cluster() {
    local name="$1" device="$2" tmp="$3" limit=150
    local log="$tmp/$name.log"
    if [[ "$device" == cpu ]]; then limit=90; fi
    limit="$(serve_left "$limit")"
    serve_log "starting the $name cluster (worker on $device; up to ${limit} s to get ready)"
    # `timeout` leads its own process group: a signal to it reaches the
    # coordinator and its worker. RUST_LIB_BACKTRACE=0: no backtraces of
    # stripped frames under error messages (panics keep RUST_BACKTRACE's).
    WEFT_PTX_CACHE="$SERVE_PTX_CACHE" RUST_LIB_BACKTRACE=0 timeout -k 5 "$(serve_left 100000)" \
        "$BIN_DIR/weft-coordinator" --model "$tmp/fixture/model" --tp 1 \
        --local-workers --worker-bin "$BIN_DIR/weft-worker" --worker-device "$device" \
        --listen 127.0.0.1:0 --cluster-listen 127.0.0.1:0 --http-listen 127.0.0.1:0 \
        --kv-blocks "$SERVE_KV_BLOCKS" --drain-grace-s 5 --register-timeout-s "$limit" \
        >"$log" 2>&1 &
    CLUSTER_PID=$!
    local deadline=$((SECONDS + limit)) t0=$SECONDS
    while :; do
        CLUSTER_ADDR="$(sed -n 's/^weft-coordinator ready: gRPC API on \([^,]*\),.*/\1/p' "$log" | head -n1)"
        if [[ -n "$CLUSTER_ADDR" ]]; then
            serve_log "$name cluster ready on grpc://$CLUSTER_ADDR after $((SECONDS - t0)) s"
            return 0
        fi
        if ! kill -0 "$CLUSTER_PID" 2>/dev/null; then
            local status=0
            wait "$CLUSTER_PID" || status=$?
            CLUSTER_PID=""
            serve_log "FAIL: the $name cluster exited during startup (status $status)"
            serve_why "$log" "$device"
            return 1
        fi
        if ((SECONDS >= deadline)); then
            serve_log "FAIL: the $name cluster was not ready after ${limit} s"
            stop_cluster
            serve_why "$log" "$device"
            return 1
        fi
        sleep 0.2
    done
}

# serve_why LOG DEVICE: the worker's own complaint about its device, if any,
# then the log's tail.
serve_why() {
    local why
    why="$(grep -m1 -e "--device $2" "$1" || true)"
    if [[ -n "$why" ]]; then serve_log "worker: $why"; fi
    serve_tail "$1"
}

serve_tail() {
    echo "---- last 40 lines of $(basename "$1")"
    tail -n 40 "$1" 2>/dev/null || true
    echo "----"
}

# Stops the running cluster: SIGTERM, 20 s to drain and exit, then SIGKILL
# to the whole group.
stop_cluster() {
    [[ -n "$CLUSTER_PID" ]] || return 0
    kill -TERM "$CLUSTER_PID" 2>/dev/null || true
    local _
    for _ in $(seq 100); do
        kill -0 "$CLUSTER_PID" 2>/dev/null || break
        sleep 0.2
    done
    if kill -0 "$CLUSTER_PID" 2>/dev/null; then
        serve_log "the cluster did not stop within 20 s; killing it"
        kill -KILL -- "-$CLUSTER_PID" 2>/dev/null || true
    fi
    wait "$CLUSTER_PID" 2>/dev/null || true
    CLUSTER_PID=""
}

# serve_load NAME TMP ARGS...: weft-load against the running cluster, its
# JSON report in TMP/NAME.json and its output in TMP/NAME-load.log; never
# fails the script (its exit status is printed).
serve_load() {
    local name="$1" tmp="$2" secs status=0
    shift 2
    secs="$(serve_left 90)"
    timeout -k 5 "$((secs + 10))" "$BIN_DIR/weft-load" --target "grpc://$CLUSTER_ADDR" \
        --dataset jsonl --requests "$SERVE_PROMPTS" \
        --max-duration-s "$secs" --no-progress --json "$tmp/$name.json" "$@" \
        >"$tmp/$name-load.log" 2>&1 || status=$?
    sed "s/^/  weft-load: /" "$tmp/$name-load.log"
    serve_log "weft-load ($name) exited with status $status"
}

# serve_summary CPU_JSON GPU_JSON PROMPTS DEVICE: prints the comparison and
# fails when the stage fails.
serve_summary() {
    python3 - "$@" <<'PY'
import json, sys

rec_path, chk_path, prompts, device = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]

def load(path):
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError) as e:
        print(f"serve check: no report {path}: {e}")
        return None

def counts(r):
    q = r["requests"]
    errors = ", ".join(f"{k}: {v}" for k, v in (q.get("errors") or {}).items())
    examples = "; ".join(f"{k}: {v}" for k, v in (q.get("error_examples") or {}).items())
    text = f"ok {q['ok']}/{r['config']['requests']}, failed {q['failed']}"
    if q.get("cancelled"):
        text += f", cancelled {q['cancelled']}"
    if q.get("not_started"):
        text += f", not started {q['not_started']}"
    if errors:
        text += f" ({errors}; e.g. {examples})"
    return text, q["ok"] == prompts and q["failed"] == 0

failures = []
rec, chk = load(rec_path), load(chk_path)
if rec is None:
    failures.append("the CPU recording has no report")
else:
    text, ok = counts(rec)
    print(f"CPU cluster, concurrency 1 (recording): {text}")
    if not ok:
        failures.append("the CPU recording had failed requests")
if chk is None:
    failures.append(f"the {device} run has no report")
else:
    text, ok = counts(chk)
    conc = chk["config"]["concurrency"]
    print(f"{device} cluster, concurrency {conc} (check): {text}")
    if not ok:
        failures.append(f"requests failed on {device}")
    c = chk.get("correctness") or {}
    checked, matched = c.get("checked") or 0, c.get("matched") or 0
    findings = c.get("findings") or []
    first = {}
    for f in findings:
        if f.get("against") == "expected":
            first.setdefault(f["index"], f)
    transit = [f for f in findings if f.get("against") == "stream"]
    differ0 = sum(1 for f in first.values() if f.get("position", 0) == 0)
    print(f"outputs compared: {checked}/{prompts}")
    print(f"first token equal: {checked - differ0}/{checked}")
    print(f"whole output equal: {matched}/{checked}")
    if first:
        pos = [f.get("position", 0) for f in first.values()]
        print(f"mean first mismatch at token {sum(pos) / len(pos):.1f} "
              f"(over the {len(pos)} that differ)")
        print("first mismatch positions: " + ", ".join(
            f"prompt {i}: {f['kind']} at token {f.get('position')} "
            f"(len {f.get('expected_len')} vs {f.get('got_len')})"
            for i, f in sorted(first.items())))
    if transit:
        failures.append(f"{len(transit)} streams lost or duplicated tokens in transit")
    if checked < prompts:
        failures.append(f"only {checked} of {prompts} outputs compared")
    if differ0 * 4 > checked:
        failures.append(f"the first token differs for {differ0} of {checked} prompts (more than a quarter)")
if failures:
    print("serve check: FAIL: " + "; ".join(failures))
    sys.exit(1)
print(f"serve check: ok (CPU against {device})")
PY
}

# serve_stage DEVICE TMP: the whole stage; its output is the stage's log.
serve_stage() {
    local device="$1" tmp="$2" left exe
    left=$((SERVE_DEADLINE_S - SECONDS))
    if ((left > SERVE_MAX_S)); then left=$SERVE_MAX_S; fi
    SERVE_END=$((SECONDS + left))
    echo "== serve check $(date -u +%Y-%m-%dT%H:%M:%SZ): CPU cluster against a cluster on $device (${left} s budget)"
    if ((left < 120)); then
        serve_log "FAIL: skipped, only ${left} s left of the script's budget"
        return 1
    fi
    for exe in weft-gpu-check weft-coordinator weft-worker weft-load; do
        if [[ ! -x "$BIN_DIR/$exe" ]]; then
            serve_log "FAIL: no $BIN_DIR/$exe: run 'scripts/gpu-check.sh build' here first and carry .gpu-bin"
            return 1
        fi
    done
    command -v python3 >/dev/null || { serve_log "FAIL: python3 is needed for the summary"; return 1; }
    if [[ "$device" == cuda* ]]; then find_libs; fi
    "$BIN_DIR/weft-gpu-check" write-serve-fixture "$tmp/fixture" || {
        serve_log "FAIL: could not write the fixture"
        return 1
    }
    SERVE_PROMPTS="$(wc -l <"$tmp/fixture/prompts.jsonl")"
    trap stop_cluster EXIT
    start_cluster cpu cpu "$tmp" || return 1
    serve_load cpu "$tmp" --dataset-path "$tmp/fixture/prompts.jsonl" --concurrency 1 \
        --record-expected "$tmp/expected.jsonl"
    stop_cluster
    if [[ ! -s "$tmp/expected.jsonl" ]]; then
        serve_log "FAIL: the CPU cluster recorded no expected outputs"
        serve_tail "$tmp/cpu.log"
        return 1
    fi
    start_cluster device "$device" "$tmp" || return 1
    serve_load device "$tmp" --dataset-path "$tmp/expected.jsonl" \
        --concurrency "$SERVE_CONCURRENCY" --check
    stop_cluster
    serve_summary "$tmp/cpu.json" "$tmp/device.json" "$SERVE_PROMPTS" "$device" || {
        serve_tail "$tmp/cpu.log"
        serve_tail "$tmp/device.log"
        return 1
    }
}

# serve_check DEVICE: serve_stage, its output teed into $OUT/serve-check.log,
# followed there by the JSON reports and the cluster logs.
serve_check() {
    local device="$1" out="${OUT:-/tmp/weft-gpu-check}" tmp rc=0 f
    mkdir -p "$out"
    SERVE_PTX_CACHE="$out/ptx-cache"
    tmp="$(mktemp -d "${TMPDIR:-/tmp}/weft-serve-check.XXXXXX")"
    local log="$out/serve-check.log"
    (serve_stage "$device" "$tmp") 2>&1 | tee "$log" || rc=$?
    for f in cpu.json device.json cpu.log device.log; do
        [[ -e "$tmp/$f" ]] || continue
        echo "==== $f (last 400 lines)"
        tail -n 400 "$tmp/$f"
        echo
    done >>"$log"
    rm -rf "$tmp"
    echo "serve check log: $log"
    return "$rc"
}
