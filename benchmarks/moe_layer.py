"""One MoE layer of the Mixtral bench shape (8 experts, hidden 512, intermediate 1376,
top-2, bf16) on the cpu backend: the native one-call layer (backends/cpu/moe_csrc.py) with
experts in quire's own bf16 GEMM layout (gemm_csrc.py, where the CPU has AVX-512 BF16) and
in oneDNN's, the torch path the native layer replaced (grouping in torch ops, oneDNN-packed
expert linears), and each layout's expert linears alone, interleaved in one process,
medians of 7 rounds.

    python benchmarks/moe_layer.py
"""

from __future__ import annotations

import os
import time

import numpy as np
import torch
from quant_kernels import cpu_name  # this folder (run as a script)

from quire.backends.cpu.linear import bf16_gemm_available
from quire.backends.cpu.moe import CpuMoEExperts
from quire.backends.torch.models.moe import ExpertLinears, MoEExperts, route


def _time(fn, reps: int = 30) -> float:
    fn()
    start = time.perf_counter()
    for _ in range(reps):
        fn()
    return (time.perf_counter() - start) / reps * 1e3


def _compare(layers: dict[str, CpuMoEExperts], tokens: int) -> dict[str, float]:
    x = torch.randn(tokens, 512).bfloat16()
    logits = torch.randn(tokens, 8)
    _, ids = route(logits, 2, True)
    counts = torch.bincount(ids.reshape(-1), minlength=8).tolist()
    rows = [(e, torch.randn(n, 512).bfloat16()) for e, n in enumerate(counts) if n]

    def linears(layer: CpuMoEExperts) -> None:
        for e, up_in in rows:
            layer.down[e](layer.activate(layer.up[e](up_in)))

    results: dict[str, list[float]] = {}
    with torch.no_grad():
        for _ in range(7):
            for name, layer in layers.items():
                results.setdefault(f"native ({name})", []).append(
                    _time(lambda layer=layer: layer(x, logits)))
                results.setdefault(f"linears only ({name})", []).append(
                    _time(lambda layer=layer: linears(layer)))
            results.setdefault("torch path (oneDNN)", []).append(
                _time(lambda: ExpertLinears.forward(layers["oneDNN"], x, logits)))
    return {k: float(np.median(v)) for k, v in results.items()}


def main() -> None:
    torch.manual_seed(0)
    ref = MoEExperts(8, 512, 1376, 2, True, "silu")
    with torch.no_grad():
        ref.w13.normal_(0, 0.02)
        ref.w2.normal_(0, 0.02)
    ref = ref.to(torch.bfloat16)
    layers = {}
    if bf16_gemm_available(torch.bfloat16):
        layers["vnni"] = CpuMoEExperts.packed_from(ref)
    os.environ["QUIRE_CPU_BF16_GEMM"] = "0"
    layers["oneDNN"] = CpuMoEExperts.packed_from(ref)
    print(f"CPU: {cpu_name()}; threads {torch.get_num_threads()}; ms per layer call")
    for tokens in (1, 8, 32, 64, 128):
        medians = _compare(layers, tokens)
        print(f"{tokens:3d} tokens: " + ", ".join(f"{k} {v:.2f}" for k, v in medians.items()))


if __name__ == "__main__":
    main()
