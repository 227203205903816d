"""Offline throughput of quire on a seeded synthetic workload (a random Llama, no download).

    .venv/bin/python benchmarks/throughput.py [--dtype float32] [--num-requests 64]

Workload: prompt and output lengths drawn log-uniformly in [32, 256] (many short, a long
tail), token-id prompts, fixed output lengths (ignore_eos). Reports requests/s, output
tokens/s, total tokens/s and KV figures.
"""

from __future__ import annotations

import argparse
import json
import os
import time

import numpy as np


def build_bench_model(path: str, dtype: str) -> str:
    if os.path.exists(os.path.join(path, "config.json")):
        return path
    from quire.testing.tiny_models import build_model

    return build_model(path, "llama", hidden_size=512, num_layers=8, num_heads=8,
                       num_kv_heads=8, intermediate_size=1376, vocab_size=32000,
                       max_position_embeddings=2048, weight_scale=1.0, logit_scale=1.0,
                       dtype=dtype, model_vocab_size=32000)


def workload(num_requests: int, seed: int = 0) -> tuple[list[list[int]], list[int]]:
    rng = np.random.default_rng(seed)
    lens = np.exp(rng.uniform(np.log(32), np.log(256), size=(2, num_requests))).astype(int)
    prompts = [rng.integers(10, 32000, size=n).tolist() for n in lens[0]]
    return prompts, lens[1].tolist()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--dtype", default="float32")
    ap.add_argument("--num-requests", type=int, default=64)
    ap.add_argument("--model-dir", default=".bench-model")
    ap.add_argument("--profile", action="store_true")
    args = ap.parse_args()
    from quire import LLM, SamplingParams

    model = build_bench_model(args.model_dir, "float32")
    prompts, out_lens = workload(args.num_requests)
    llm = LLM(model, dtype=args.dtype, block_size=16)
    params = [SamplingParams(temperature=0, max_tokens=n, ignore_eos=True) for n in out_lens]
    llm.generate(prompts[:4], params[:4], use_tqdm=False)  # warm up
    if args.profile:
        import cProfile
        import pstats

        prof = cProfile.Profile()
        prof.enable()
    t0 = time.perf_counter()
    outs = llm.generate(prompts, params, use_tqdm=False)
    elapsed = time.perf_counter() - t0
    if args.profile:
        prof.disable()
        pstats.Stats(prof).sort_stats("cumulative").print_stats(25)
    num_out = sum(len(o.outputs[0].token_ids) for o in outs)
    num_in = sum(len(p) for p in prompts)
    result = {"backend": "quire-cpu", "dtype": args.dtype, "requests": len(prompts),
              "elapsed_s": round(elapsed, 2), "req_per_s": round(len(prompts) / elapsed, 2),
              "output_tok_per_s": round(num_out / elapsed, 1),
              "total_tok_per_s": round((num_out + num_in) / elapsed, 1),
              "preemptions": llm.engine.stats().num_preemptions}
    print(json.dumps(result))


if __name__ == "__main__":
    main()
