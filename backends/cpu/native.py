"""The cpu backend's C++ kernels (sources in csrc.py), built on first use with
torch.utils.cpp_extension (gcc, OpenMP):

- paged_decode: decode attention reading K/V in place through the block table, with an
  online softmax per block, instead of copying every row's pages into a contiguous buffer
  first (that copy was about a quarter of an fp32 step: benchmarks/RESULTS.md);
- rms_norm, silu_mul, rope_inplace: elementwise layers in one pass each (fused.py).

QUIRE_CPU_NATIVE=0 disables them; when they cannot be built here, the torch paths are used.

Dimensions: R rows (one query each), H query heads, K KV heads (H = K * G), D head size,
N blocks, S block size, B max blocks per row.
"""

from __future__ import annotations

import logging
import os

import torch

logger = logging.getLogger(__name__)


_module = None
_failed = False


def _load():
    global _module, _failed
    if _module is None and not _failed:
        try:
            from torch.utils.cpp_extension import load_inline

            from quire.backends.cpu import csrc

            _module = load_inline(
                name="quire_cpu_kernels_v3", cpp_sources=[csrc.COMMON + csrc.DECODE + csrc.FUSED],
                functions=["paged_decode", "rms_norm", "silu_mul", "rope_inplace"],
                # -fopenmp: ATen's parallel_for is OpenMP-backed; the associative-math flags
                # let gcc vectorize the dot-product reductions (finite-math stays off: the
                # running max starts at -inf).
                extra_cflags=["-O3", "-march=native", "-fopenmp", "-fassociative-math",
                              "-fno-signed-zeros", "-fno-trapping-math"],
                extra_ldflags=["-fopenmp"], verbose=False)
        except Exception as exc:  # no compiler or headers here: stay correct, go eager
            _failed = True
            logger.warning("native CPU kernels unavailable (%s: %s); using the "
                           "torch paths", type(exc).__name__, str(exc).splitlines()[0][:200])
    return _module


def available() -> bool:
    return os.environ.get("QUIRE_CPU_NATIVE", "1") != "0" and _load() is not None


def paged_decode(q: torch.Tensor, key_cache: torch.Tensor, value_cache: torch.Tensor,
                 block_tables: torch.Tensor, seq_lens: torch.Tensor, scale: float,
                 sliding_window: int | None = None, soft_cap: float | None = None
                 ) -> torch.Tensor:
    """q [R, H, D]; key/value_cache [N, S, K, D] (contiguous); block_tables [R, B] int32;
    seq_lens [R] int32 -> [R, H, D]. Softmax in fp32; call available() first."""
    return _load().paged_decode(q.contiguous(), key_cache, value_cache, block_tables,
                                seq_lens, scale, sliding_window or 0, soft_cap or 0.0)


def module():
    """The built extension (call available() first)."""
    return _load()
