#!/usr/bin/env bash
# Builds llama.cpp's llama-bench and llama-server (CPU only) once into a
# cache, from the llama.cpp sources vendored in the llama-cpp-python sdist
# on PyPI. Prints the folder holding the binaries.
# Needs: cmake, a C++ compiler and pip (apt-get install cmake g++).
set -euo pipefail
VERSION="${LLAMA_CPP_PYTHON_VERSION:-0.3.16}"
CACHE="${WEFT_CACHE:-$HOME/.cache/weft}/llama.cpp-$VERSION"
if [ -x "$CACHE/bin/llama-bench" ] && [ -x "$CACHE/bin/llama-server" ]; then
  echo "$CACHE/bin"; exit 0
fi
mkdir -p "$CACHE"
cd "$CACHE"
if [ ! -d src ]; then
  # The sdist comes through pip; preparing its metadata needs scikit-build-core.
  python3 -m pip install -q scikit-build-core >&2
  python3 -m pip download -q --no-deps --no-binary :all: --no-build-isolation \
    "llama-cpp-python==$VERSION" -d dl >&2
  mkdir -p src && tar xzf dl/llama_cpp_python-"$VERSION".tar.gz -C src --strip-components=1
  rm -rf dl
fi
cmake -S src/vendor/llama.cpp -B build -DCMAKE_BUILD_TYPE=Release \
  -DGGML_NATIVE=ON -DLLAMA_CURL=OFF -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF \
  -DLLAMA_BUILD_TOOLS=ON -DLLAMA_BUILD_SERVER=ON >&2
cmake --build build --config Release -j "$(nproc)" --target llama-bench llama-server >&2
mkdir -p bin && cp build/bin/llama-bench build/bin/llama-server bin/
cp build/bin/*.so* bin/ 2>/dev/null || true
echo "$CACHE/bin"
