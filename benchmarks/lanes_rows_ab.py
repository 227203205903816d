"""The lanes kernel of a git revision against the working tree's, in one process, over the
row counts its paths serve (1-12 rows stream the weights, more go through the scratch
buffer; 8-bit weights switch at 7):

    PYTHONPATH=. python benchmarks/lanes_rows_ab.py --against HEAD [--rows 1 7 8 16 64]

Both sources are built (the revision's `backends/cpu/lanes_csrc.py` in place of the working
tree's) and called alternately on the bundled model's largest Q4_1 projection (3072 x 576)
and its Q8_0 head (49152 x 576), 7 rounds, medians; prints microseconds per call and
before / after. A change that helps a batch-1 step can still cost prefill or large batches
(a two-chain accumulation did: 1.18x at one row, 0.41-0.89x from the scratch buffer), so
run this sweep, not only a batch-1 A/B. Also prints the CPU (timings differ between
machines of this kind, and this shared VM is noisy: compare within a run).
"""

from __future__ import annotations

import argparse
import subprocess
import time
import types

import numpy as np
import torch

SHAPES = [("Q4_1", 3072, 576), ("Q8_0", 49152, 576)]


def _revision_module(rev: str):
    """The native extension built with the revision's lanes source."""
    from quire.backends.cpu import lanes_csrc, native

    src = subprocess.run(["git", "show", f"{rev}:backends/cpu/lanes_csrc.py"], check=True,
                         capture_output=True, text=True).stdout
    old = types.ModuleType("lanes_at_rev")
    exec(compile(src, f"{rev}:lanes_csrc.py", "exec"), old.__dict__)  # noqa: S102
    tag = subprocess.run(["git", "rev-parse", "--short", rev], check=True,
                         capture_output=True, text=True).stdout.strip()
    ext = native.LazyExtension(
        f"quire_lanes_ab_{tag}",
        lambda: [native._sources()[0].replace(lanes_csrc.LANES, old.LANES)],
        native._KERNELS.functions, f"lanes kernel at {rev}")
    module = ext.get()
    if module is None:
        raise SystemExit(f"could not build the lanes kernel at {rev}")
    return module


def _layer(fmt: str, n: int, k: int):
    from gguf import quants
    from gguf.constants import GGMLQuantizationType as T

    from quire.backends.cpu import quant_native
    from quire.backends.torch.quantization import PackedLinearMethod, QuantLinear
    from quire.models.quant import from_gguf

    qtype = getattr(T, fmt)
    w = np.random.default_rng(0).standard_normal((n, k)).astype(np.float32)
    method = PackedLinearMethod(quant_native.CpuQuantKernel())
    layer = QuantLinear(k, n, method)
    method.load_weights(layer, from_gguf(quants.quantize(w, qtype), int(qtype), (n, k)))
    method.process_after_loading(layer)  # repacks into the lanes layout
    return layer


def main() -> None:
    from quire.backends.cpu import native, quant_lanes
    from quire.bench.report import machine

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--against", default="HEAD", help="git revision to compare with")
    p.add_argument("--rows", type=int, nargs="+", default=[1, 7, 8, 16, 64])
    p.add_argument("--rounds", type=int, default=7)
    args = p.parse_args()
    if not quant_lanes.available():
        raise SystemExit("the lanes kernel needs AVX-512 BF16 and the native build")
    print(f"CPU: {machine()}; threads {torch.get_num_threads()}")
    kernels = {"before": _revision_module(args.against), "after": native.module()}
    for fmt, n, k in SHAPES:
        layer = _layer(fmt, n, k)
        w = (layer.qweight, layer.scales, layer.mins, layer.bits, layer.group_size,
             layer.out_features)
        for rows in args.rows:
            x = torch.randn(rows, k).bfloat16()
            calls = max(3, int(2e6 // (n * k * max(rows, 4) // 64)))
            times: dict[str, list[float]] = {"before": [], "after": []}
            for r in range(args.rounds):
                for name in ("before", "after") if r % 2 else ("after", "before"):
                    f = kernels[name].lanes_linear
                    f(x, *w)
                    start = time.perf_counter()
                    for _ in range(calls):
                        f(x, *w)
                    times[name].append((time.perf_counter() - start) / calls * 1e6)
            b, a = np.median(times["before"]), np.median(times["after"])
            print(f"{fmt} {n}x{k}, {rows:3d} rows: before {b:8.1f} us, after {a:8.1f} us, "
                  f"before / after {b / a:.2f}")


if __name__ == "__main__":
    main()
