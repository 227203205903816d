"""One MoE layer of the Mixtral bench shape (8 experts, hidden 512, intermediate 1376,
top-2, bf16) on the cpu backend: the native one-call layer (backends/cpu/moe_csrc.py)
against the torch path it replaced (grouping in torch ops, the same oneDNN-packed expert
linears), and the expert linears alone, interleaved in one process, medians of 7 rounds.

    python benchmarks/moe_layer.py
"""

from __future__ import annotations

import time

import numpy as np
import torch
from quant_kernels import cpu_name  # this folder (run as a script)

from quire.backends.cpu.moe import CpuMoEExperts
from quire.backends.torch.models.moe import ExpertLinears, MoEExperts, route


def _time(fn, reps: int = 30) -> float:
    fn()
    start = time.perf_counter()
    for _ in range(reps):
        fn()
    return (time.perf_counter() - start) / reps * 1e3


def _compare(layer: CpuMoEExperts, tokens: int) -> dict[str, float]:
    x = torch.randn(tokens, 512).bfloat16()
    logits = torch.randn(tokens, 8)
    _, ids = route(logits, 2, True)
    counts = torch.bincount(ids.reshape(-1), minlength=8).tolist()
    rows = [(e, torch.randn(n, 512).bfloat16(), torch.randn(n, 1376).bfloat16())
            for e, n in enumerate(counts) if n]

    def linears() -> None:
        for e, up_in, down_in in rows:
            layer.up[e](up_in)
            layer.down[e](down_in)

    results: dict[str, list[float]] = {"native": [], "torch path": [], "linears only": []}
    with torch.no_grad():
        for _ in range(7):
            results["native"].append(_time(lambda: layer(x, logits)))
            results["torch path"].append(_time(lambda: ExpertLinears.forward(layer, x, logits)))
            results["linears only"].append(_time(linears))
    return {k: float(np.median(v)) for k, v in results.items()}


def main() -> None:
    torch.manual_seed(0)
    ref = MoEExperts(8, 512, 1376, 2, True, "silu")
    with torch.no_grad():
        ref.w13.normal_(0, 0.02)
        ref.w2.normal_(0, 0.02)
    layer = CpuMoEExperts.packed_from(ref.to(torch.bfloat16))
    print(f"CPU: {cpu_name()}; threads {torch.get_num_threads()}; ms per layer call")
    for tokens in (1, 8, 32, 64):
        medians = _compare(layer, tokens)
        print(f"{tokens:3d} tokens: " + ", ".join(f"{k} {v:.2f}" for k, v in medians.items()))


if __name__ == "__main__":
    main()
