"""Hybrid KV cache against one table, side by side in the same KV memory, on a model with
Gemma 3 1B's KV geometry (26 layers, every 6th global, window 512, 1 KV head of 256) and
a small random body (hidden 64), so attention and the cache dominate:

- capacity: pages, and the longest sequence the cache can hold;
- a long-context workload: 16 requests of 1536 prompt tokens (random ids) and 64 output
  tokens each, all at once, max_num_seqs 16: wall time, preemptions, and the most
  requests running at once.

    python benchmarks/hybrid_kv.py [--kv-mib 256] [--dtype bfloat16]

Runs interleave (hybrid, one table, hybrid, ...); prints a table and writes JSON to
benchmarks/results/hybrid-kv-<date>.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time

import numpy as np


def _model(out: str) -> str:
    from quire.testing.tiny_models import build_model

    return build_model(out, "gemma3", hidden_size=64, num_layers=26, num_heads=4,
                       num_kv_heads=1, intermediate_size=128, max_position_embeddings=32768,
                       head_dim=256, sliding_window=512,
                       layer_types=["full_attention" if (i + 1) % 6 == 0
                                    else "sliding_attention" for i in range(26)])


def _run(model: str, hybrid: bool, kv_mib: int, dtype: str) -> dict:
    from quire import LLM, SamplingParams

    llm = LLM(model, dtype=dtype, block_size=16, kv_cache_memory_bytes=kv_mib << 20,
              max_num_seqs=16, max_num_batched_tokens=2048,
              disable_hybrid_kv_cache_manager=not hybrid)
    engine = llm.engine
    rng = np.random.default_rng(0)
    vocab = engine.model_info.vocab_size
    params = SamplingParams(temperature=0, max_tokens=64, ignore_eos=True)
    for i in range(16):
        engine.add_request(rng.integers(3, vocab, 1536).tolist(), params, request_id=str(i))
    start, most_running, steps = time.perf_counter(), 0, 0
    while engine.has_unfinished_requests():
        engine.step()
        steps += 1
        most_running = max(most_running, engine.stats().num_running)
    wall = time.perf_counter() - start
    stats = engine.stats()
    out = {"hybrid": hybrid, "kv_blocks_or_pages": stats.num_blocks + 1,
           "max_model_len": engine.max_model_len, "wall_s": round(wall, 2),
           "preemptions": stats.num_preemptions, "most_running": most_running,
           "steps": steps, "output_tok_s": round(16 * 64 / wall, 1)}
    engine.shutdown()
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--kv-mib", type=int, default=256)
    ap.add_argument("--dtype", default="bfloat16")
    ap.add_argument("--repeats", type=int, default=1)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        model = _model(tmp)
        runs = [_run(model, hybrid, args.kv_mib, args.dtype)
                for _ in range(args.repeats) for hybrid in (True, False)]
    cpu = next((line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo")
                if line.startswith("model name")), platform.processor())
    print(f"CPU: {cpu}, {os.cpu_count()} cores; KV memory {args.kv_mib} MiB, {args.dtype}")
    print("| cache | blocks/pages | max_model_len | wall s | out tok/s | preemptions | "
          "most running |")
    print("|---|---|---|---|---|---|---|")
    for r in runs:
        print(f"| {'hybrid' if r['hybrid'] else 'one table'} | {r['kv_blocks_or_pages']} | "
              f"{r['max_model_len']} | {r['wall_s']} | {r['output_tok_s']} | "
              f"{r['preemptions']} | {r['most_running']} |")
    os.makedirs("benchmarks/results", exist_ok=True)
    path = f"benchmarks/results/hybrid-kv-{time.strftime('%Y%m%d')}.json"
    with open(path, "w") as f:
        json.dump({"cpu": cpu, "cores": os.cpu_count(), "args": vars(args), "runs": runs},
                  f, indent=1)
    print("wrote", path)


if __name__ == "__main__":
    main()
