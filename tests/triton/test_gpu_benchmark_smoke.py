"""The GPU benchmark script runs end to end (tiny shapes, Triton's CPU interpreter), so it
works when a GPU is lent. Its numbers mean nothing here; its structure is checked."""

from __future__ import annotations

import json
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def test_gpu_benchmark_smoke(tmp_path):
    env = {**os.environ, "TRITON_INTERPRET": "1", "CUDA_VISIBLE_DEVICES": ""}
    proc = subprocess.run([sys.executable, os.path.join(ROOT, "benchmarks", "gpu_attention.py"),
                           "--smoke", "--out", str(tmp_path)],
                          env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    (path,) = tmp_path.glob("gpu-*.json")
    result = json.loads(path.read_text())
    assert result["max_abs_error"] < 5e-2
    assert {(r["context"], r["batch"]) for r in result["decode"]} == \
        {(64, 1), (64, 4), (256, 1), (256, 4)}
    assert all(r["time_ratio"] > 0 for r in result["prefill"])
    assert [r["cuda_graphs"] for r in result["end_to_end"]] == [False, True]
    assert "| context | batch |" in proc.stdout
