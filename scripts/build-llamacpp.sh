#!/usr/bin/env bash
# Builds llama.cpp's llama-bench and llama-server (CPU only) once into a
# cache, from the llama.cpp sources vendored in the llama-cpp-python sdist
# on PyPI. Prints the folder holding the binaries.
# Needs: cmake, a C++ compiler, curl (apt-get install cmake g++ curl).
set -euo pipefail
VERSION="${LLAMA_CPP_PYTHON_VERSION:-0.3.16}"
CACHE="${WEFT_CACHE:-$HOME/.cache/weft}/llama.cpp-$VERSION"
if [ -x "$CACHE/bin/llama-bench" ] && [ -x "$CACHE/bin/llama-server" ]; then
  echo "$CACHE/bin"; exit 0
fi
mkdir -p "$CACHE"
cd "$CACHE"
if [ ! -d src ]; then
  url=$(curl -fsS "https://pypi.org/simple/llama-cpp-python/" \
        | grep -o "https://[^\"#]*llama_cpp_python-$VERSION.tar.gz" | head -1)
  [ -n "$url" ] || { echo "sdist of llama-cpp-python $VERSION not found" >&2; exit 1; }
  curl -fsS -o sdist.tar.gz "$url"
  mkdir -p src && tar xzf sdist.tar.gz -C src --strip-components=1
  rm sdist.tar.gz
fi
cmake -S src/vendor/llama.cpp -B build -DCMAKE_BUILD_TYPE=Release \
  -DGGML_NATIVE=ON -DLLAMA_CURL=OFF -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF \
  -DLLAMA_BUILD_TOOLS=ON -DLLAMA_BUILD_SERVER=ON >&2
cmake --build build --config Release -j "$(nproc)" --target llama-bench llama-server >&2
mkdir -p bin && cp build/bin/llama-bench build/bin/llama-server bin/
cp build/bin/*.so* bin/ 2>/dev/null || true
echo "$CACHE/bin"
