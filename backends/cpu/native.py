"""The cpu backend's C++ kernels (sources in the *_csrc.py files), built on first use with
torch.utils.cpp_extension (gcc, OpenMP):

- paged_decode: decode attention reading K/V in place through the block table, with an
  online softmax per block, instead of copying every row's pages into a contiguous buffer
  first (that copy was about a quarter of an fp32 step: benchmarks/RESULTS.md); contexts in
  chunks of 128 tokens on a fixed grid, one job each, merged in order (decode_csrc.py); bf16
  caches on AVX-512 BF16 take tiles of 16 tokens across the vector lanes (decode_vec_csrc.py);
- rms_norm, silu_mul, rope_inplace: elementwise layers in one pass each (fused.py);
- moe_experts: a MoE layer's routing and experts in one call (moe_csrc.py, moe.py);
- argmax_rows: greedy sampling's argmax, ~10x torch's on [64, 32000] on the dev box;
- vnni_linear (gemm_csrc.py): bf16 GEMM for dense layers and experts;
- lanes_linear (lanes_csrc.py): 4- and 8-bit packed weights, outputs across the lanes;
- decode_layer (layer_csrc.py): a decode step's Llama-family layer in one call.

QUIRE_CPU_NATIVE=0 disables them; when they cannot be built here, the torch paths are used.

Dimensions: R rows (one query each), H query heads, K KV heads (H = K * G), D head size,
N blocks, S block size, B max blocks per row.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable

import torch

logger = logging.getLogger(__name__)


_FLAGS = ["-O3", "-fopenmp", "-fassociative-math", "-fno-signed-zeros", "-fno-trapping-math"]


class LazyExtension:
    """A C++ extension built on first use with load_inline; get() returns None (after one
    warning naming `what`) where it cannot be built, so callers stay on their torch paths.
    -fopenmp: ATen's parallel_for is OpenMP-backed; the associative-math flags let gcc
    vectorize reductions (finite-math stays off: running maxima start at -inf)."""

    def __init__(self, name: str, sources: Callable[[], list[str]], functions: list[str],
                 what: str, march_native: bool = True) -> None:
        self.name, self.sources, self.functions, self.what = name, sources, functions, what
        self.cflags = _FLAGS + (["-march=native"] if march_native else [])
        self.module = None
        self.failed = False

    def get(self):
        if self.module is None and not self.failed:
            try:
                from torch.utils.cpp_extension import load_inline

                self.module = load_inline(
                    name=self.name, cpp_sources=self.sources(), functions=self.functions,
                    extra_cflags=self.cflags, extra_ldflags=["-fopenmp"], verbose=False)
            except Exception as exc:  # no compiler or headers here: stay correct
                self.failed = True
                logger.warning("%s unavailable (%s: %s)", self.what, type(exc).__name__,
                               str(exc).splitlines()[0][:200])
        return self.module


def _sources() -> list[str]:
    from quire.backends.cpu import (
        comm_csrc,
        csrc,
        decode_csrc,
        decode_plain_csrc,
        decode_vec_csrc,
        gemm_csrc,
        lanes_csrc,
        lanes_dequant_csrc,
        layer_csrc,
        moe_csrc,
    )

    return [csrc.COMMON + decode_vec_csrc.DECODE_VEC + decode_plain_csrc.DECODE_PLAIN +
            decode_csrc.DECODE + csrc.FUSED + gemm_csrc.GEMM + moe_csrc.MOE + lanes_csrc.LANES +
            lanes_dequant_csrc.LANES_DEQUANT + comm_csrc.SHM_ALLREDUCE + layer_csrc.LAYER]


_KERNELS = LazyExtension("quire_cpu_kernels_v48", _sources,
                         ["paged_decode", "rms_norm", "silu_mul", "rope_inplace",
                          "moe_experts", "argmax_rows", "bf16_gemm_supported", "vnni_pack",
                          "vnni_linear", "lanes_supported", "lanes_linear",
                          "lanes_dequantize", "lanes_dequantize_t",
                          "decode_plan_new", "decode_plan_free", "decode_layer",
                          "decode_layers"],
                         "native CPU kernels (using the torch paths)")
_load = _KERNELS.get


def available() -> bool:
    return os.environ.get("QUIRE_CPU_NATIVE", "1") != "0" and _load() is not None


_KV_KINDS = {None: 0, "int8": 1, "fp8_e4m3": 2}


def paged_decode(q: torch.Tensor, key_cache: torch.Tensor, value_cache: torch.Tensor,
                 block_tables: torch.Tensor, seq_lens: torch.Tensor, scale: float,
                 sliding_window: int | None = None, soft_cap: float | None = None,
                 kv_quant: str | None = None) -> torch.Tensor:
    """q [R, H, D]; key/value_cache [N, S, K, D] (contiguous) in q's dtype, or with kv_quant
    ("int8", "fp8_e4m3") uint8 [N, S, K, D + 4] (backends/torch/kv_quant.py);
    block_tables [R, B] int32; seq_lens [R] int32 -> [R, H, D]. Softmax in fp32; call
    available() first."""
    return _load().paged_decode(q.contiguous(), key_cache, value_cache, block_tables,
                                seq_lens, scale, sliding_window or 0, soft_cap or 0.0,
                                _KV_KINDS[kv_quant])


def module():
    """The built extension (call available() first)."""
    return _load()


def argmax(logits: torch.Tensor) -> torch.Tensor:
    """logits [S, V] -> [S] int64, torch.argmax(dim=-1)'s answer (first maximum; NaN counts as
    the maximum); the native kernel for fp32 rows when built, else torch."""
    if logits.dtype == torch.float32 and logits.dim() == 2 and logits.stride(1) == 1 \
            and logits.shape[1] and available():
        return _load().argmax_rows(logits)
    return logits.argmax(dim=-1)
