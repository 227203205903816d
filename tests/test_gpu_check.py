"""The prepared GPU check's dry run (issue 17): every step runs on the CPU, tiny, so the
script that a lent GPU runs first cannot rot."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_gpu_check_dry_run(tmp_path):
    env = {**os.environ, "PYTHON": sys.executable}
    done = subprocess.run(["bash", str(ROOT / "scripts" / "gpu_check.sh"), str(tmp_path),
                           "--dry"], env=env, capture_output=True, text=True, timeout=900)
    log = (tmp_path / "check.log").read_text() if (tmp_path / "check.log").exists() else ""
    assert done.returncode == 0, done.stdout + done.stderr + log[-3000:]
    results = json.loads((tmp_path / "results.json").read_text())
    assert results["dry"] is True
    for step in ("triton_tests", "greedy", "attention", "throughput", "jax"):
        assert results[step]["ok"], (step, results[step])
    assert len(results["greedy"]["rows"]) == 6  # 3 architectures (dry run) x graphs on/off
    assert all(r["tokens_compared"] > 0 for r in results["greedy"]["rows"])
    systems = [r["system"] for r in results["throughput"]["rows"]]
    assert any(s.startswith("quire") for s in systems) and any("hf-static" in s for s in systems)
    summary = (tmp_path / "summary.md").read_text()
    assert "| greedy | yes |" in summary and (tmp_path / "gpu_results.md").exists()
