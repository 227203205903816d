"""Runs a workload through quire's engine, recording throughput, latency and KV figures."""

from __future__ import annotations

import time
from typing import Any

import numpy as np

from quire.bench.workload import Workload
from quire.core.sampling_params import SamplingParams


def run_quire(llm, workload: Workload, label: str = "quire") -> dict[str, Any]:
    """All requests submitted at once; the engine is stepped to completion. The prefix cache
    is emptied first, so an earlier round's prompts give no free hits (baselines run in fresh
    processes)."""
    engine = llm.engine
    if not engine.kv_cache.pool.reset_prefix_cache():
        raise RuntimeError("run_quire needs an idle engine")
    stats0 = engine.stats()
    times0 = dict(engine.step_times)
    kv = engine.kv_cache
    block_size = kv.block_size
    start = time.perf_counter()
    arrival = time.monotonic()
    ids = [engine.add_request(p, SamplingParams(temperature=0, max_tokens=n, ignore_eos=True),
                              arrival_time=arrival)
           for p, n in zip(workload.prompts, workload.output_lens)]
    first: dict[str, float] = {}
    last: dict[str, tuple[float, int]] = {}
    gaps: list[float] = []
    done: dict[str, Any] = {}
    peak_blocks = 0
    tokens_held = slots_held = 0
    while engine.has_unfinished_requests():
        outs = engine.step()
        now = time.monotonic()
        peak_blocks = max(peak_blocks, kv.stats().num_used_blocks)
        # Waste: slots a request holds that carry no token (its last block's tail).
        for r in engine.scheduler.running:
            tokens_held += r.num_computed_tokens
            slots_held += len(kv.get_block_ids(r.request_id)) * block_size
        for out in outs:
            n = len(out.outputs[0].token_ids)
            if n and out.request_id not in first:
                first[out.request_id] = now - arrival
            prev = last.get(out.request_id)
            if prev is not None and n > prev[1]:
                gaps.append((now - prev[0]) / (n - prev[1]))
            last[out.request_id] = (now, n)
            if out.finished:
                done[out.request_id] = out
    elapsed = time.perf_counter() - start
    stats = engine.stats()
    num_out = sum(len(done[i].outputs[0].token_ids) for i in ids)
    queries = stats.prefix_cache_queries - stats0.prefix_cache_queries
    hits = stats.prefix_cache_hits - stats0.prefix_cache_hits
    spent = {k: engine.step_times[k] - times0[k] for k in times0}
    total = sum(spent.values()) or 1.0
    return {
        "system": label, "elapsed_s": elapsed, **throughput(workload, num_out, elapsed),
        **percentiles("ttft_s", list(first.values())), **percentiles("itl_s", gaps),
        "kv_peak_blocks": peak_blocks,
        "kv_waste_pct": 100.0 * (1 - tokens_held / slots_held) if slots_held else 0.0,
        "prefix_hit_rate": hits / queries if queries else 0.0,
        "preemptions": stats.num_preemptions - stats0.num_preemptions,
        # Where step time went, in % (forward = model incl. attention; the rest is Python).
        **{f"time_{k}_pct": 100.0 * v / total for k, v in spent.items()},
    }


def throughput(workload: Workload, num_out: int, elapsed: float) -> dict[str, float]:
    return {"requests_per_s": workload.num_requests / elapsed,
            "output_tok_per_s": num_out / elapsed,
            "total_tok_per_s": (num_out + workload.num_prompt_tokens) / elapsed}


def percentiles(name: str, values: list[float]) -> dict[str, float]:
    if not values:
        return {}
    arr = np.asarray(values)
    return {f"{name}_p50": float(np.percentile(arr, 50)),
            f"{name}_p90": float(np.percentile(arr, 90)),
            f"{name}_p99": float(np.percentile(arr, 99))}
