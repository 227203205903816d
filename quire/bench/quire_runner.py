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
    # Time per output token after the first, per request (what a reader of a stream sees,
    # averaged: steps that add several tokens, as with speculative decoding, count fully).
    tpot = [(last[i][0] - arrival - first[i]) / (last[i][1] - 1)
            for i in ids if i in first and last[i][1] > 1]
    stats = engine.stats()
    num_out = sum(len(done[i].outputs[0].token_ids) for i in ids)
    queries = stats.prefix_cache_queries - stats0.prefix_cache_queries
    hits = stats.prefix_cache_hits - stats0.prefix_cache_hits
    spent = {k: engine.step_times[k] - times0[k] for k in times0}
    total = sum(spent.values()) or 1.0
    return {
        "system": label, "elapsed_s": elapsed, **throughput(workload, num_out, elapsed),
        **percentiles("ttft_s", list(first.values())), **percentiles("itl_s", gaps),
        **percentiles("tpot_s", tpot),
        "kv_peak_blocks": peak_blocks,
        "kv_waste_pct": 100.0 * (1 - tokens_held / slots_held) if slots_held else 0.0,
        "prefix_hit_rate": hits / queries if queries else 0.0,
        "preemptions": stats.num_preemptions - stats0.num_preemptions,
        # Where step time went, in % (forward = model incl. attention; the rest is Python).
        **{f"time_{k}_pct": 100.0 * v / total for k, v in spent.items()},
        **_spec_stats(stats0.spec_decode, stats.spec_decode),
    }


def _spec_stats(before, after) -> dict[str, float]:
    """Speculative decoding in this run: acceptance rate and tokens gained per verified
    step (accepted drafts + 1)."""
    if after is None:
        return {}
    drafts = after.num_drafts - before.num_drafts
    proposed = after.num_draft_tokens - before.num_draft_tokens
    accepted = after.num_accepted_tokens - before.num_accepted_tokens
    return {"spec_drafts": drafts,
            "spec_acceptance_rate": accepted / proposed if proposed else 0.0,
            "spec_mean_accepted_len": 1 + accepted / drafts if drafts else 0.0}


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
