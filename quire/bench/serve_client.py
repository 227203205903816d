"""`quire bench serve`: stream requests to a running server and time them."""

from __future__ import annotations

import argparse
import asyncio
import json
import time
from typing import Any

import httpx
import numpy as np

from quire.bench.quire_runner import percentiles, throughput
from quire.bench.workload import sharegpt_like


async def _one(client: httpx.AsyncClient, model: str, prompt: list[int], max_tokens: int
               ) -> tuple[float | None, list[float], int]:
    """(TTFT, inter-token gaps, tokens) of one streamed completion. Tokens: the usage the
    server reports, else the content chunks (one token each, as llama.cpp's server sends)."""
    body = {"model": model, "prompt": prompt, "max_tokens": max_tokens, "temperature": 0,
            "ignore_eos": True, "stream": True, "stream_options": {"include_usage": True}}
    start = time.perf_counter()
    ttft, last, gaps, num_tokens, num_chunks = None, start, [], 0, 0
    async with client.stream("POST", "/v1/completions", json=body) as r:
        if r.status_code != 200:
            raise RuntimeError(f"server answered {r.status_code}: {await r.aread()!r}")
        async for line in r.aiter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            chunk = json.loads(line[6:])
            if chunk.get("usage"):
                num_tokens = chunk["usage"]["completion_tokens"]
                continue
            num_chunks += 1
            now = time.perf_counter()
            if ttft is None:
                ttft = now - start
            else:
                gaps.append(now - last)
            last = now
    return ttft, gaps, num_tokens or num_chunks


async def _run(args: argparse.Namespace, system: str | None = None) -> dict[str, Any]:
    async with httpx.AsyncClient(base_url=args.url, timeout=None) as client:
        info = (await client.get("/v1/models")).json()["data"][0]
        vocab = getattr(args, "vocab_size", None) or info.get("vocab_size", 32000)
        workload = sharegpt_like(args.num_requests, vocab, args.min_len, args.max_len,
                                 seed=args.seed)
        rng = np.random.default_rng(args.seed)
        limit = asyncio.Semaphore(args.concurrency or args.num_requests)

        async def guarded(p, n):
            async with limit:
                return await _one(client, info["id"], p, n)

        start = time.perf_counter()
        tasks = []
        for p, n in zip(workload.prompts, workload.output_lens):
            tasks.append(asyncio.create_task(guarded(p, n)))
            if args.request_rate:
                await asyncio.sleep(rng.exponential(1.0 / args.request_rate))
        results = await asyncio.gather(*tasks)
        elapsed = time.perf_counter() - start
    ttfts = [r[0] for r in results if r[0] is not None]
    gaps = [g for r in results for g in r[1]]
    return {"system": system or f"quire serve ({info['id']})", "elapsed_s": elapsed,
            **throughput(workload, sum(r[2] for r in results), elapsed),
            **percentiles("ttft_s", ttfts), **percentiles("itl_s", gaps)}


def run_serve(args: argparse.Namespace, system: str | None = None) -> dict[str, Any]:
    """system: the row's label (default: quire serve and the served model's id)."""
    return asyncio.run(_run(args, system))
