"""Per-call cost of the packed kernel at one decode row (a Q4_1 1536x576 layer, bf16 x):
the kernel taking bf16 rows itself (widening, group sums and narrowing inside) against
the conversions and group sums as separate tensor ops (the kernel before 2026-11-28's
fourth session), interleaved in one process, 7 rounds of 2000 calls, medians.

    PYTHONPATH=. python benchmarks/quant_call_overhead.py
"""

from __future__ import annotations

import time

import numpy as np
import torch
from gguf.constants import GGMLQuantizationType as T

from quire.backends.cpu import quant_native
from tests.torch.test_quant_kernel import layer_for, packed


def main() -> None:
    layer = layer_for(packed(T.Q4_1, 1536, 576), quant_native.CpuQuantKernel())
    kernel = quant_native._load()
    x = torch.randn(1, 576).bfloat16()
    args = (layer.qweight, layer.scales, layer.mins, 4, 32, 2, False)

    def inside() -> torch.Tensor:
        return kernel.quant_gemv(x, *args)

    def around() -> torch.Tensor:
        xf = x.float().contiguous()
        xf.view(1, 18, 32).sum(2).contiguous()  # the group sums, as the old call made them
        return kernel.quant_gemv(xf, *args).to(x.dtype)

    times: dict[str, list[float]] = {"inside the kernel": [], "as tensor ops": []}
    for _ in range(7):
        for name, call in (("inside the kernel", inside), ("as tensor ops", around)):
            for _ in range(50):
                call()
            start = time.perf_counter()
            for _ in range(2000):
                call()
            times[name].append((time.perf_counter() - start) / 2000 * 1e6)
    for name, values in times.items():
        print(f"{name}: median {np.median(values):.1f} us per call "
              f"({', '.join(f'{v:.1f}' for v in values)})")


if __name__ == "__main__":
    main()
