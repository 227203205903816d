"""`quire bench` end to end on a tiny model (speed is not asserted: CI machines are noisy)."""

from __future__ import annotations

import json
import subprocess
import sys

from quire.bench.quire_runner import run_quire
from quire.bench.workload import fixed, shared_prefix, sharegpt_like
from quire.cli import main as cli_main


def test_workloads_are_seeded_and_shaped():
    a, b = sharegpt_like(50, 1000, 32, 256, seed=3), sharegpt_like(50, 1000, 32, 256, seed=3)
    assert a == b and all(32 <= len(p) <= 256 for p in a.prompts)
    assert all(32 <= n <= 256 for n in a.output_lens)
    assert sorted(map(len, a.prompts))[25] < 144  # median below the midpoint: skewed short
    w = shared_prefix(8, 1000, num_prefixes=2, prefix_len=64, suffix_len=8)
    assert w.prompts[0][:64] == w.prompts[2][:64] != w.prompts[1][:64]


def test_run_quire_reports_kv_figures(llama_dir):
    from quire import LLM

    llm = LLM(llama_dir, dtype="float32", num_blocks=64, block_size=8)
    row = run_quire(llm, fixed(6, 500, 20, 10))
    assert row["output_tok_per_s"] > 0 and row["kv_peak_blocks"] > 0
    # 6 requests of 20 + 10 tokens in blocks of 8: 4 blocks each at the end (30/32 slots).
    assert 0 <= row["kv_waste_pct"] < 50 and row["preemptions"] == 0
    assert row["ttft_s_p50"] <= row["ttft_s_p99"]
    assert llm.engine.stats().num_used_blocks == 0


def test_bench_throughput_with_hf_baseline(llama_dir, tmp_path, capsys):
    rc = cli_main(["bench", "throughput", "--model", llama_dir, "--num-requests", "6",
                   "--max-len", "48", "--baselines", "hf-static", "--output-dir", str(tmp_path),
                   "--num-blocks", "128"])
    assert rc == 0
    out = capsys.readouterr().out
    assert "quire (cpu)" in out and "hf-static" in out
    (path,) = tmp_path.glob("throughput-*.json")
    doc = json.loads(path.read_text())
    assert [r["system"] for r in doc["results"]] == ["quire (cpu)", "hf-static (batch 16, cpu)"]
    assert list(tmp_path.glob("throughput-*.png"))


def test_bench_prefix_and_latency(llama_dir, tmp_path, capsys):
    assert cli_main(["bench", "prefix", "--model", llama_dir, "--num-requests", "8",
                     "--prefix-len", "64", "--output-dir", str(tmp_path)]) == 0
    doc = json.loads(next(tmp_path.glob("prefix-*.json")).read_text())
    on, off = doc["results"]
    # 4 prefixes of 64 tokens, each shared by 2 of 8 prompts of 96: a third is a hit.
    assert on["prefix_hit_rate"] > 0.3 and off["prefix_hit_rate"] == 0
    assert cli_main(["bench", "latency", "--model", llama_dir, "--batch-size", "4",
                     "--prompt-len", "16", "--output-len", "8", "--output-dir",
                     str(tmp_path)]) == 0
    assert "itl_s_p99" in capsys.readouterr().out


def test_bench_serve_against_a_server(server, tmp_path):
    res = subprocess.run([sys.executable, "-m", "quire.cli", "bench", "serve", "--url",
                          server.url, "--num-requests", "6", "--max-len", "40",
                          "--concurrency", "3", "--output-dir", str(tmp_path)],
                         capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr
    doc = json.loads(next(tmp_path.glob("serve-*.json")).read_text())
    (row,) = doc["results"]
    assert row["output_tok_per_s"] > 0 and "ttft_s_p50" in row


def test_unknown_baseline(llama_dir, capsys):
    assert cli_main(["bench", "throughput", "--model", llama_dir, "--baselines", "llamacpp",
                     "--num-requests", "2", "--num-blocks", "32"]) == 2
    assert "unknown baseline" in capsys.readouterr().err


def test_bench_structured(llama_dir, tmp_path, capsys):
    assert cli_main(["bench", "structured", "--model", llama_dir, "--batch-sizes", "1,3",
                     "--num-steps", "3", "--dtype", "float32", "--output-dir",
                     str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "3 running:" in out and "TTFT: new schema" in out
    (path,) = tmp_path.glob("structured-*.json")
    rows = json.loads(path.read_text())["results"]
    assert [r.get("running") for r in rows[:2]] == [1, 3]
    assert all(r["step_ms_json_schema"] > 0 for r in rows[:2])


def test_bench_latency_grounded_with_speculation(llama_dir, tmp_path, capsys):
    """--speculative-config runs speculation off alongside and reports the ratio and the
    acceptance figures (the tiny model's tokenizer has a chat template)."""
    spec = '{"method": "ngram", "num_speculative_tokens": 3}'
    assert cli_main(["bench", "latency", "--model", llama_dir, "--workload", "grounded",
                     "--batch-size", "2", "--output-len", "12", "--speculative-config", spec,
                     "--output-dir", str(tmp_path), "--num-blocks", "128"]) == 0
    out = capsys.readouterr().out
    assert "time per output token" in out and "quire (cpu) spec" in out
    doc = json.loads(next(tmp_path.glob("latency-*.json")).read_text())
    spec_row, plain_row = doc["results"]
    assert "spec_acceptance_rate" in spec_row and "spec_acceptance_rate" not in plain_row
    assert doc["settings"]["tpot_speedup"] > 0
    assert spec_row["tpot_s_p50"] > 0 and plain_row["tpot_s_p50"] > 0


def test_llama_cpp_baseline_needs_a_gguf_file(llama_dir):
    import pytest

    from quire.bench.baselines import BASELINES

    with pytest.raises(ValueError, match="GGUF"):
        BASELINES["llama.cpp"](llama_dir, fixed(1, 500, 8, 4))


def test_bench_latency_compare_dense(tmp_path, capsys):
    """--compare-dense runs the packed model and its dense copy in the same rounds and
    reports their ratio (the bundled Q4_1 file: the #12 batch-1 comparison), and the JSON
    names the CPU."""
    from quire import default_model

    model = default_model.bundled_model_path()
    assert model is not None, default_model.INSTALL_HINT
    assert cli_main(["bench", "latency", "--model", model, "--batch-size", "1",
                     "--prompt-len", "8", "--output-len", "4", "--compare-dense",
                     "--num-blocks", "64", "--output-dir", str(tmp_path)]) == 0
    assert "with dense weights" in capsys.readouterr().out
    doc = json.loads(next(tmp_path.glob("latency-*.json")).read_text())
    assert [r["system"] for r in doc["results"]] == ["quire (cpu)", "quire (cpu) dense"]
    assert doc["settings"]["dense_tpot_ratio"] > 0
    assert "cores" in doc["machine"]
