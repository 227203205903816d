#!/usr/bin/env bash
# Set up (if needed), run the backend conformance kit once per backend, then the whole test
# suite, on the CPU. The GPU backends can't run here: for them the kit reports why and skips.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
# triton-interpret: the cuda/rocm Triton kernels in Triton's CPU interpreter.
for backend in cpu example triton-interpret cuda rocm tpu; do
    echo "== conformance kit: backend $backend"
    interpret=0
    [ "$backend" = triton-interpret ] && interpret=1
    skip=()
    case $backend in cuda | rocm) skip=(--quire-skip-unavailable) ;; esac
    TRITON_INTERPRET=$interpret .venv/bin/python -m pytest -q -rs -p no:cacheprovider \
        --pyargs quire.testing --quire-backend "$backend" "${skip[@]}"
done
echo "== test suite"
.venv/bin/python -m pytest -q "$@"
