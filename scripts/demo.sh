#!/usr/bin/env bash
# Set up (if needed), build a small random-weight Llama locally (no download) and generate
# with it on the CPU backend.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
MODEL_DIR=${MODEL_DIR:-.demo-model}
if [ ! -f "$MODEL_DIR/config.json" ]; then
    .venv/bin/python -m quire.testing.tiny_models "$MODEL_DIR"
fi
.venv/bin/quire generate --model "$MODEL_DIR" --backend cpu --max-tokens 32 \
    --prompt "The capital of France is" --prompt "Paged attention keeps" "$@"
