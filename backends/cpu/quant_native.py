"""The cpu backend's packed-weight kernels, built on first use:

- lanes (lanes_csrc.py, quant_lanes.py; where the CPU has AVX-512 BF16): layers are repacked
  at load (prepare()) with 16 outputs across the vector lanes; a call unpacks each weight
  tile once to bf16 and runs vdpbf16ps for every row (exact against the dequantized weights
  for bf16 rows; float32 rows go in as two bf16 parts), at any number of rows (prefill
  chunks and large batches too: tiles unpacked once into a scratch buffer, then every row).
  1.4-1.9x the rows kernel at one row on the bundled model's shapes, and extra rows cost
  only their multiply-adds (benchmarks/QUANTIZATION.md);
- rows (sources in quant_csrc.py; every other CPU):
  decode rows (up to FUSED_ROWS) through a fused dequantize-dot that streams the packed
  weights once per step for all rows, in float (exact against the dequantized weights). An
  AVX-512 version (16-float vectors) or an AVX2+FMA one (8-float) is chosen at run time by
  what the CPU reports, else a portable C++ loop. An
  optional 8-bit-activation variant (int8_activations=True, llama.cpp's scheme: two
  integer instructions per group) trades exactness for speed; it is not the default because
  on the bundled model it flips near-tied tokens (its chat answer to "What is the capital
  of France?" changes);
- more rows on the rows kernel (prefill): blocks of outputs dequantized to float32 (~1 MiB,
  in L2), one GEMM per block.

isa() says which path runs. QUIRE_CPU_NATIVE=0 turns the kernel off; then packed weights are
dequantized at load.
"""

from __future__ import annotations

import os

import torch

from quire.backends.cpu import quant_lanes
from quire.backends.cpu.native import LazyExtension
from quire.backends.torch.quantization import QuantLinear

FUSED_ROWS = 16


def _sources() -> list[str]:
    from quire.backends.cpu.quant_csrc import ENTRY, PORTABLE
    from quire.backends.cpu.quant_simd_csrc import SIMD

    return [PORTABLE + SIMD + ENTRY]


# No -march=native: the AVX2 functions carry target attributes and are chosen at run time.
_KERNEL = LazyExtension("quire_cpu_quant_v13", _sources,
                        ["quant_gemv", "quant_dequantize", "quant_matmul", "quant_isa",
                         "quant_gemv_address"],
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

    def prepare(self, layer: QuantLinear) -> None:
        """Repack into the lanes layout (quant_lanes.py) where this CPU runs it and the layer
        allows it; other layers keep the checkpoint's layout for the rows kernel."""
        if self.lanes and quant_lanes.supported(layer):
            quant_lanes.repack(layer)

    @property
    def lanes(self) -> bool:
        return (self.max_path == _PATHS["avx512"] and not self.int8_activations
                and quant_lanes.available())

    def matmul(self, x: torch.Tensor, layer: QuantLinear) -> torch.Tensor:
        if layer.layout == quant_lanes.LAYOUT:  # any number of rows
            if x.dtype in (torch.bfloat16, torch.float32):  # (what the kernel takes)
                return layer.lanes_call(x)
            return layer.lanes_call(x.float()).to(x.dtype)
        if x.shape[0] <= FUSED_ROWS:  # (the kernel converts x and y itself)
            return _load().quant_gemv(x, layer.qweight, layer.scales, layer.mins, layer.bits,
                                      layer.group_size, self.max_path, self.int8_activations)
        return _load().quant_matmul(x, layer.qweight, layer.scales, layer.mins, layer.bits,
                                    layer.group_size, layer.in_features).to(x.dtype)

    def dequantize(self, layer: QuantLinear) -> torch.Tensor:
        if layer.layout == quant_lanes.LAYOUT:
            return quant_lanes.dequantize_t(layer).t()
        return _load().quant_dequantize(layer.qweight, layer.scales, layer.mins, layer.bits,
                                        layer.group_size, layer.in_features)

    def dequantize_rows(self, layer: QuantLinear, ids: torch.Tensor) -> torch.Tensor:
        """Rows ids of a repacked layer (embedding lookups), float32."""
        return quant_lanes.dequantize(layer, ids)

    def rows_call(self) -> tuple[int, int, int]:
        """What the fused decode layer needs to call this kernel's rows path itself:
        (quant_gemv's address, max_path, int8_activations)."""
        return _load().quant_gemv_address(), self.max_path, int(self.int8_activations)
