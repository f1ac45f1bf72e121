#!/usr/bin/env bash
# Batch-1 decode, side by side in one run: weft (TP=1, one process) and
# llama.cpp's `llama-bench -p 0 -n 128` on the same GGUF and thread count.
# Prints both rates and their ratio. Usage: scripts/bench-decode.sh [threads]
set -euo pipefail
cd "$(dirname "$0")/.."
THREADS="${1:-2}"
MODEL="$(scripts/fetch-model.sh)"
LLAMA_BIN="$(scripts/build-llamacpp.sh)"
cargo build --release -q -p weft-model --example decode_bench
echo "machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs)"
echo "model:   $MODEL"
llama_out="$(LD_LIBRARY_PATH="$LLAMA_BIN" "$LLAMA_BIN/llama-bench" -m "$MODEL" -p 0 -n 128 -t "$THREADS" -r 5 -o csv 2>/dev/null)"
llama_rate="$(echo "$llama_out" | python3 -c 'import csv,sys; r=list(csv.DictReader(sys.stdin)); print(r[-1]["avg_ts"])')"
weft_out="$(target/release/examples/decode_bench "$MODEL" "$THREADS" 128 5)"
weft_rate="$(echo "$weft_out" | sed -E 's/.*: ([0-9.]+) ±.*/\1/')"
echo "llama.cpp tg128 threads=$THREADS: $llama_rate tokens/s"
echo "$weft_out"
python3 -c "print(f'ratio weft / llama.cpp: {float($weft_rate)/float($llama_rate):.2f}x')"
