#!/usr/bin/env bash
# What mutual TLS on the collective costs, side by side in one run: the same
# TP=3 cluster (local workers, cluster mTLS from a test PKI) serving SmolLM2
# with the collective over TLS (the default with cluster TLS) and in clear
# (WEFT_COMM_PLAINTEXT=true, inherited by the local workers), alternating
# ROUNDS times, each loaded by weft-load at concurrency C (closed loop, EOS
# ignored, greedy, distinct prompts). Prints output tokens/s and TTFT p50 of
# every run, the medians, and the TLS / plaintext ratio of the medians.
#
# Usage: scripts/bench-comm-tls.sh
# Env:   C=8                 concurrency
#        ROUNDS=3            TLS / plaintext pairs
#        MAX_TOKENS=64       output tokens per request
#        THREADS=1           compute threads per worker (3 workers)
#        RUN_TIMEOUT_S=90    cap of each weft-load run
#        BENCH_OUT=DIR       keep logs and reports there (default: under /tmp)
#        CARGO_TARGET_DIR    honoured, as by cargo
set -euo pipefail
cd "$(dirname "$0")/.."

C="${C:-8}"
ROUNDS="${ROUNDS:-3}"
MAX_TOKENS="${MAX_TOKENS:-64}"
THREADS="${THREADS:-1}"
RUN_TIMEOUT_S="${RUN_TIMEOUT_S:-90}"
OUT="${BENCH_OUT:-$(mktemp -d "${TMPDIR:-/tmp}/weft-bench-comm-tls.XXXXXX")}"
mkdir -p "$OUT"
BIN="${CARGO_TARGET_DIR:-target}/release"
# shellcheck source=scripts/lib/bench-common.sh
source scripts/lib/bench-common.sh
trap stop_server EXIT

MODEL="$(scripts/fetch-model.sh)"
log "building weft (release)"
cargo build --release -q --bins
PKI="$OUT/pki"
scripts/make-test-certs.sh "$PKI" >/dev/null

# serve MODE ROUND: the TP=3 cluster with the collective in MODE (tls or
# plain), loaded once; report in $OUT/MODE-ROUND-cC.json.
serve() {
  local mode="$1" round="$2" port cport plain=false
  port="$(free_port)"
  cport="$(free_port)"
  [[ "$mode" == plain ]] && plain=true
  local cmd=("$BIN/weft-coordinator" --model "$MODEL" --tp 3 --local-workers
    --listen "127.0.0.1:$port" --cluster-listen "127.0.0.1:$cport" --http-listen 127.0.0.1:0
    --max-num-seqs 64 --worker-threads "$THREADS"
    --tls-cert "$PKI/coordinator.pem" --tls-key "$PKI/coordinator.key" --tls-ca "$PKI/ca.pem")
  show_cmd "WEFT_COMM_PLAINTEXT=$plain" "${cmd[@]}"
  local tag="$mode-$round"
  WEFT_COMM_PLAINTEXT="$plain" setsid "${cmd[@]}" \
    >"$OUT/weft-c$tag.stdout" 2>"$OUT/weft-c$tag.stderr" &
  SERVER_PID=$!
  if wait_for "weft ($tag)" 180 weft_ready "$OUT/weft-c$tag.stdout"; then
    if ! grep -q "tls=$([[ $plain == true ]] && echo false || echo true)" "$OUT/weft-c$tag.stderr"; then
      log "$tag: the workers' log does not show the expected collective mode"
    fi
    load "$tag" "$C" "grpc://127.0.0.1:$port"
  fi
  stop_server
}

print_header
for round in $(seq "$ROUNDS"); do
  serve tls "$round"
  serve plain "$round"
done

python3 - "$OUT" "$C" "$ROUNDS" <<'PY'
import json, os, statistics, sys
out, c, rounds = sys.argv[1], sys.argv[2], int(sys.argv[3])

def run(mode, r):
    try:
        with open(os.path.join(out, f"{mode}-{r}-c{c}.json")) as f:
            j = json.load(f)
        return j["output_tokens_per_s"], j["ttft_ms"]["p50"]
    except (OSError, ValueError, KeyError, TypeError):
        return None

print(f"\nconcurrency {c}, TP=3 on one machine (loopback)")
print(f"{'round':>5}  {'TLS tok/s':>9}  {'plain tok/s':>11}  {'TLS TTFT p50':>12}  {'plain TTFT p50':>14}")
med = {}
for mode in ("tls", "plain"):
    med[mode] = [x for x in (run(mode, r) for r in range(1, rounds + 1)) if x]
for r in range(1, rounds + 1):
    t, p = run("tls", r), run("plain", r)
    f = lambda v, i, s: "-" if v is None else format(v[i], s)
    print(f"{r:>5}  {f(t, 0, '.1f'):>9}  {f(p, 0, '.1f'):>11}  {f(t, 1, '.1f'):>12}  {f(p, 1, '.1f'):>14}")
if med["tls"] and med["plain"]:
    tt = statistics.median(x[0] for x in med["tls"])
    pt = statistics.median(x[0] for x in med["plain"])
    print(f"median output tok/s: TLS {tt:.1f}, plaintext {pt:.1f}, TLS / plaintext {tt / pt:.3f}x")
PY
echo
echo "logs and JSON reports: $OUT"
