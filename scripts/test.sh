#!/usr/bin/env bash
# Set up (if needed), run the backend conformance kit once per backend (a backend that can't
# run here is reported as skipped, with why), then the whole test suite, on the CPU.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
# triton-interpret: the cuda/rocm Triton kernels in Triton's CPU interpreter.
for backend in cpu example triton-interpret cuda rocm tpu; do
    echo "== conformance kit: backend $backend"
    interpret=0
    [ "$backend" = triton-interpret ] && interpret=1
    TRITON_INTERPRET=$interpret .venv/bin/python -m pytest -q -rs -p no:cacheprovider \
        --pyargs quire.testing --quire-backend "$backend"
done
echo "== test suite"
.venv/bin/python -m pytest -q "$@"
