"""The cpu backend's packed-weight kernel (sources in quant_csrc.py), built on first use:

- decode rows (up to FUSED_ROWS): a fused dequantize-dot that streams the packed weights
  once per step for all rows, in float (exact against the dequantized weights). An AVX-512
  version (16-float vectors) or an AVX2+FMA one (8-float) is chosen at run time by what the
  CPU reports, else a portable C++ loop. An
  optional 8-bit-activation variant (int8_activations=True, llama.cpp's scheme: two
  integer instructions per group) trades exactness for speed; it is not the default because
  on the bundled model it flips near-tied tokens (its chat answer to "What is the capital
  of France?" changes);
- more rows (prefill): dequantize the weight to float32, then one dense GEMM.

isa() says which path runs. QUIRE_CPU_NATIVE=0 turns the kernel off; then packed weights are
dequantized at load.
"""

from __future__ import annotations

import os

import torch
import torch.nn.functional as F

from quire.backends.cpu.native import LazyExtension
from quire.backends.torch.quantization import QuantLinear

FUSED_ROWS = 16


def _sources() -> list[str]:
    from quire.backends.cpu.quant_csrc import ENTRY, PORTABLE
    from quire.backends.cpu.quant_simd_csrc import SIMD

    return [PORTABLE + SIMD + ENTRY]


# No -march=native: the AVX2 functions carry target attributes and are chosen at run time.
_KERNEL = LazyExtension("quire_cpu_quant_v11", _sources,
                        ["quant_gemv", "quant_dequantize", "quant_isa"],
                        "native quantized-matmul kernel (packed weights get dequantized at "
                        "load)", march_native=False)
_load = _KERNEL.get


def available() -> bool:
    return os.environ.get("QUIRE_CPU_NATIVE", "1") != "0" and _load() is not None


def isa() -> str:
    """The instruction set the kernel runs with on this CPU."""
    return _load().quant_isa()


_PATHS = {"portable": 0, "avx2": 1, "avx512": 2}


class CpuQuantKernel:
    formats = frozenset({"Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q8_0", "Q4_K", "Q5_K", "Q6_K",
                         "int8", "gptq", "awq"})

    def __init__(self, portable: bool = False, int8_activations: bool = False,
                 isa: str | None = None) -> None:
        """portable / isa ("portable", "avx2", "avx512"): the most this kernel may use
        (tests pin the narrower paths; the CPU's own limit still applies)."""
        self.max_path = _PATHS[isa or ("portable" if portable else "avx512")]
        self.int8_activations = int8_activations

    def matmul(self, x: torch.Tensor, layer: QuantLinear) -> torch.Tensor:
        if x.shape[0] <= FUSED_ROWS:  # (the kernel converts x and y itself)
            return _load().quant_gemv(x, layer.qweight, layer.scales, layer.mins, layer.bits,
                                      layer.group_size, self.max_path, self.int8_activations)
        return F.linear(x.float(), self.dequantize(layer)).to(x.dtype)

    def dequantize(self, layer: QuantLinear) -> torch.Tensor:
        return _load().quant_dequantize(layer.qweight, layer.scales, layer.mins, layer.bits,
                                        layer.group_size, layer.in_features)
