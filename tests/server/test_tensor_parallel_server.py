"""A tensor-parallel server whose worker is killed mid-stream: the stream ends with an
error event (503), the server stays up, and /health says why."""

from __future__ import annotations

import json
import os
import signal
import subprocess

import httpx

from tests.server_fixtures import Server


def test_killed_worker_mid_stream(llama_dir):
    server = Server(llama_dir, "--tensor-parallel-size", "2")
    try:
        workers = subprocess.run(["pgrep", "-P", str(server.proc.pid), "-f", "serve_rank"],
                                 capture_output=True, text=True).stdout.split()
        assert len(workers) == 1
        body = {"model": "tiny", "prompt": "Hello world", "max_tokens": 400,
                "temperature": 0, "ignore_eos": True, "stream": True}
        events = []
        with httpx.stream("POST", server.url + "/v1/completions", json=body,
                          timeout=60) as r:
            for line in r.iter_lines():
                if not line.startswith("data: "):
                    continue
                events.append(line[6:])
                if len(events) == 2:
                    os.kill(int(workers[0]), signal.SIGKILL)
        assert events[-1] == "[DONE]"
        error = json.loads(events[-2])["error"]
        assert error["code"] == 503 and "rank 1" in error["message"], error
        assert server.proc.poll() is None  # the server stays up ...
        health = httpx.get(server.url + "/health")
        assert health.status_code == 503 and "rank 1" in health.json()["error"]["message"]
        # ... and answers new requests with a clear 503, never a hang
        r = httpx.post(server.url + "/v1/completions", timeout=60, json={
            "model": "tiny", "prompt": "x", "max_tokens": 3})
        assert r.status_code == 503, r.text
        assert "Traceback" not in server.output().split("engine step failed")[0]
    finally:
        server.stop()
