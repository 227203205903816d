#!/usr/bin/env bash
# The prepared GPU check (issue 17). On a bare NVIDIA machine with no network:
#   bash scripts/gpu_check.sh OUT_DIR
# installs quire from this working tree (--no-deps; wheels for anything the machine lacks
# come from the git-ignored .gpu-wheels/, filled here by scripts/gpu_wheels.sh), then runs
# scripts/gpu_check.py: each step with its own time limit, results and a summary table in
# OUT_DIR. `--dry` runs the same steps on the CPU (Triton's interpreter, JAX on the CPU),
# tiny, without installing: CI does that so the script cannot rot.
set -euo pipefail
cd "$(dirname "$0")/.."
out=${1:?usage: scripts/gpu_check.sh OUT_DIR [--dry]}
shift
py=${PYTHON:-python3}
if [ "${1:-}" != --dry ]; then
    if compgen -G ".gpu-wheels/*.whl" > /dev/null; then
        $py -m pip install -q --no-deps --no-index .gpu-wheels/*.whl
    fi
    $py -m pip install -q --no-deps --no-build-isolation -e .
fi
exec $py scripts/gpu_check.py "$out" "$@"
