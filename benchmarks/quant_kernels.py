"""The cpu packed-weight kernel's paths side by side on the bundled SmolLM2 model's matrix
shapes (Q4_1 projections, the Q8_0 tied head), rows as a decode step has them:

    python benchmarks/quant_kernels.py [--rows 1 7 16] [--rounds 2] [--dtype bfloat16]

Prints microseconds per call for each path (the lanes layout where the CPU has AVX-512 BF16;
the rows kernel's AVX-512, AVX2 and portable paths), interleaved rounds, and the CPU's model
name (timings on this shared VM are noisy: compare within a run).
"""

from __future__ import annotations

import argparse
import platform
import time

import numpy as np
import torch

SHAPES = [("Q4_1", 960, 576), ("Q4_1", 3072, 576), ("Q4_1", 576, 1536), ("Q8_0", 49152, 576)]


def cpu_name() -> str:
    """The CPU's model name (also used by moe_layer.py)."""
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def main() -> None:
    from gguf import quants
    from gguf.constants import GGMLQuantizationType as T

    from quire.backends.cpu import quant_lanes, quant_native
    from quire.backends.torch.quantization import PackedLinearMethod, QuantLinear
    from quire.models.quant import from_gguf

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rows", type=int, nargs="+", default=[1])
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float32"])
    p.add_argument("--no-portable", action="store_true")
    args = p.parse_args()
    print(f"CPU: {cpu_name()}; rows kernel's best path: {quant_native.isa()}; lanes layout: "
          f"{quant_lanes.available()}; threads {torch.get_num_threads()}; x {args.dtype}")
    paths = [isa for isa in ("avx512", "avx2") if quant_native.isa() in ("avx512", isa)]
    if not args.no_portable:
        paths.append("portable")
    if quant_lanes.available():
        paths.insert(0, "lanes")
    for (fmt, n, k), rows in ((s, r) for s in SHAPES for r in args.rows):
        qtype = getattr(T, fmt)
        w = np.random.default_rng(0).standard_normal((n, k)).astype(np.float32)
        pw = from_gguf(quants.quantize(w, qtype), int(qtype), (n, k))
        x = torch.randn(rows, k).to(getattr(torch, args.dtype))
        times: dict[str, list[float]] = {}
        for _ in range(args.rounds):
            for isa in paths:
                method = PackedLinearMethod(quant_native.CpuQuantKernel(
                    isa=None if isa == "lanes" else isa))
                layer = QuantLinear(k, n, method)
                method.load_weights(layer, pw)
                if isa == "lanes":
                    method.process_after_loading(layer)  # repacks
                calls = 20 if isa == "portable" else 200
                for _ in range(5):
                    layer(x)
                start = time.perf_counter()
                for _ in range(calls):
                    layer(x)
                times.setdefault(isa, []).append((time.perf_counter() - start) / calls * 1e6)
        print(f"{fmt} {n}x{k}, {rows} rows: " + ", ".join(
            f"{isa} {' / '.join(f'{t:.0f}' for t in ts)} us" for isa, ts in times.items()))


if __name__ == "__main__":
    main()
