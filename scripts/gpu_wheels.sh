#!/usr/bin/env bash
# Fill .gpu-wheels/ (git-ignored) with wheels the GPU machine's image lacks, so
# scripts/gpu_check.sh can install them there without a network. The image carries torch,
# triton, jax (CUDA), transformers, safetensors, pluggy, numpy, pytest; it lacks gguf
# (pure Python) and the server's fastapi/uvicorn (not needed by the check).
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -m pip download -q --no-deps -d .gpu-wheels "gguf==0.19.0"
ls .gpu-wheels
