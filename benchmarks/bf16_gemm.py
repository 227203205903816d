"""quire's AVX-512 BF16 GEMM (backends/cpu/gemm_csrc.py) against oneDNN's packed bf16 linear
on the bench models' shapes: one dense layer of the bench Llama (qkv 1536x512, o 512x512,
gate_up 2752x512, down 512x1376) and one Mixtral expert (up as silu(gate) * up, then down),
32 distinct experts so weights come from memory. Interleaved, medians of 5 rounds.

    python benchmarks/bf16_gemm.py [--rows 1,8,16,32,64,256,1024]

Needs a CPU with AVX-512 BF16 (and the native kernels built); prints the CPU's name.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch
from quant_kernels import cpu_name  # this folder (run as a script)

from quire.backends.cpu import native

DENSE = [(1536, 512), (512, 512), (2752, 512), (512, 1376)]


def _onednn(w: torch.Tensor) -> torch.Tensor:
    return torch.ops.mkldnn._reorder_linear_weight(w, None)


def _linear(x: torch.Tensor, packed: torch.Tensor) -> torch.Tensor:
    return torch.ops.mkldnn._linear_pointwise(x, packed, None, "none", [], "")


def _interleaved(calls: dict, reps: int, rounds: int = 5) -> dict[str, float]:
    """ms per call of each, rounds interleaved, medians."""
    times: dict[str, list[float]] = {name: [] for name in calls}
    for fn in calls.values():  # oneDNN builds a primitive per new shape on its first call
        fn()
    for _ in range(rounds):
        for name, fn in calls.items():
            start = time.perf_counter()
            for _ in range(reps):
                fn()
            times[name].append((time.perf_counter() - start) / reps * 1e3)
    return {name: float(np.median(t)) for name, t in times.items()}


def _measure(m, rows: int, dense_1, dense_v, experts_1, experts_v) -> dict[str, float]:
    xs = [torch.randn(rows, k, dtype=torch.bfloat16) for _, k in DENSE]
    x = torch.randn(rows, 512, dtype=torch.bfloat16)

    def expert_1() -> None:
        for u, d in experts_1:
            _linear(m.silu_mul(_linear(x, u)), d)

    def expert_v() -> None:
        for u, d in experts_v:
            m.vnni_linear(m.vnni_linear(x, u, True), d, False)

    reps = 20 if rows <= 64 else 3
    out = _interleaved({
        "layer_1": lambda: [_linear(a, w) for a, w in zip(xs, dense_1)],
        "layer_v": lambda: [m.vnni_linear(a, w, False) for a, w in zip(xs, dense_v)]}, reps)
    experts = _interleaved({"expert_1": expert_1, "expert_v": expert_v}, 1)
    return {**out, **{k: v / len(experts_1) for k, v in experts.items()}}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rows", default="1,8,16,32,64,256,1024")
    args = p.parse_args()
    if not (native.available() and native.module().bf16_gemm_supported()):
        raise SystemExit("this CPU (or build) has no AVX-512 BF16")
    m = native.module()
    torch.manual_seed(0)
    dense = [torch.randn(n, k, dtype=torch.bfloat16) / k ** 0.5 for n, k in DENSE]
    dense_1 = [_onednn(w) for w in dense]
    dense_v = [m.vnni_pack(w, False) for w in dense]
    ups = [torch.randn(2752, 512, dtype=torch.bfloat16) / 512 ** 0.5 for _ in range(32)]
    downs = [torch.randn(512, 1376, dtype=torch.bfloat16) / 1376 ** 0.5 for _ in range(32)]
    experts_1 = [(_onednn(u), _onednn(d)) for u, d in zip(ups, downs)]
    experts_v = [(m.vnni_pack(u, True), m.vnni_pack(d, False)) for u, d in zip(ups, downs)]
    print(f"CPU: {cpu_name()}; threads {torch.get_num_threads()}; ms per call, medians")
    for rows in (int(r) for r in args.rows.split(",")):
        t = _measure(m, rows, dense_1, dense_v, experts_1, experts_v)
        print(f"{rows:5d} rows: dense layer oneDNN {t['layer_1']:.3f} / quire "
              f"{t['layer_v']:.3f} ({t['layer_1'] / t['layer_v']:.2f}x); expert oneDNN "
              f"{t['expert_1']:.3f} / quire {t['expert_v']:.3f} "
              f"({t['expert_1'] / t['expert_v']:.2f}x)")

if __name__ == "__main__":
    main()
