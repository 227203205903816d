"""A C++ paged decode attention kernel for the CPU, built on first use with
torch.utils.cpp_extension (gcc, OpenMP). It reads K/V in place through the block table, with
an online softmax per block, instead of copying every row's pages into a contiguous buffer
first (that copy was about a quarter of an fp32 step: benchmarks/RESULTS.md).

QUIRE_CPU_NATIVE=0 disables it; when it cannot be built here, the eager torch path is used.

Dimensions: R rows (one query each), H query heads, K KV heads (H = K * G), D head size,
N blocks, S block size, B max blocks per row.
"""

from __future__ import annotations

import logging
import os

import torch

logger = logging.getLogger(__name__)

_SOURCE = r"""
#include <torch/extension.h>
#include <ATen/Parallel.h>
#include <cmath>
#include <vector>

template <typename T>
static void decode_rows(const T* q, const T* kc, const T* vc, const int32_t* bt,
                        const int32_t* lens, T* out, int64_t R, int64_t H, int64_t K,
                        int64_t D, int64_t S, int64_t B, float scale, int64_t window,
                        float soft_cap) {
  const int64_t G = H / K;
  at::parallel_for(0, R * K, 1, [&](int64_t begin, int64_t end) {
    std::vector<float> qf(G * D), acc(G * D), m(G), l(G), s(S * G);
    for (int64_t job = begin; job < end; ++job) {
      const int64_t r = job / K, kh = job % K;
      const int64_t L = lens[r];
      for (int64_t i = 0; i < G * D; ++i) qf[i] = static_cast<float>(q[(r * H + kh * G) * D + i]);
      std::fill(acc.begin(), acc.end(), 0.f);
      std::fill(m.begin(), m.end(), -INFINITY);
      std::fill(l.begin(), l.end(), 0.f);
      const int64_t first = window > 0 ? std::max<int64_t>(0, L - window) : 0;
      for (int64_t b = first / S; b * S < L; ++b) {
        const int64_t blk = bt[r * B + b];
        const int64_t t0 = std::max(b * S, first), t1 = std::min((b + 1) * S, L);
        for (int64_t g = 0; g < G; ++g) {
          float bmax = -INFINITY;
          for (int64_t t = t0; t < t1; ++t) {
            const T* kp = kc + ((blk * S + (t - b * S)) * K + kh) * D;
            const float* qp = qf.data() + g * D;
            float dot = 0.f;
            for (int64_t d = 0; d < D; ++d) dot += qp[d] * static_cast<float>(kp[d]);
            dot *= scale;
            if (soft_cap > 0.f) dot = soft_cap * std::tanh(dot / soft_cap);
            s[(t - t0) * G + g] = dot;
            bmax = std::max(bmax, dot);
          }
          const float new_m = std::max(m[g], bmax);
          const float correction = std::exp(m[g] - new_m);
          float* ap = acc.data() + g * D;
          for (int64_t d = 0; d < D; ++d) ap[d] *= correction;
          l[g] *= correction;
          for (int64_t t = t0; t < t1; ++t) {
            const float p = std::exp(s[(t - t0) * G + g] - new_m);
            l[g] += p;
            const T* vp = vc + ((blk * S + (t - b * S)) * K + kh) * D;
            for (int64_t d = 0; d < D; ++d) ap[d] += p * static_cast<float>(vp[d]);
          }
          m[g] = new_m;
        }
      }
      for (int64_t g = 0; g < G; ++g)
        for (int64_t d = 0; d < D; ++d)
          out[(r * H + kh * G + g) * D + d] = static_cast<T>(acc[g * D + d] / l[g]);
    }
  });
}

torch::Tensor paged_decode(torch::Tensor q, torch::Tensor kc, torch::Tensor vc,
                           torch::Tensor bt, torch::Tensor lens, double scale, int64_t window,
                           double soft_cap) {
  TORCH_CHECK(q.is_contiguous() && kc.is_contiguous() && vc.is_contiguous() &&
              bt.is_contiguous() && lens.is_contiguous(), "contiguous inputs expected");
  TORCH_CHECK(bt.scalar_type() == torch::kInt32 && lens.scalar_type() == torch::kInt32,
              "block table and lengths must be int32");
  auto out = torch::empty_like(q);
  const int64_t R = q.size(0), H = q.size(1), D = q.size(2);
  const int64_t S = kc.size(1), K = kc.size(2), B = bt.size(1);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, q.scalar_type(), "paged_decode", [&] {
    decode_rows<scalar_t>(q.data_ptr<scalar_t>(), kc.data_ptr<scalar_t>(),
                          vc.data_ptr<scalar_t>(), bt.data_ptr<int32_t>(),
                          lens.data_ptr<int32_t>(), out.data_ptr<scalar_t>(), R, H, K, D, S, B,
                          static_cast<float>(scale), window, static_cast<float>(soft_cap));
  });
  return out;
}
"""

_module = None
_failed = False


def _load():
    global _module, _failed
    if _module is None and not _failed:
        try:
            from torch.utils.cpp_extension import load_inline

            _module = load_inline(
                name="quire_cpu_paged_decode", cpp_sources=[_SOURCE],
                functions=["paged_decode"],
                # -fopenmp: ATen's parallel_for is OpenMP-backed; the associative-math flags
                # let gcc vectorize the dot-product reductions (finite-math stays off: the
                # running max starts at -inf).
                extra_cflags=["-O3", "-march=native", "-fopenmp", "-fassociative-math",
                              "-fno-signed-zeros", "-fno-trapping-math"],
                extra_ldflags=["-fopenmp"], verbose=False)
        except Exception as exc:  # no compiler or headers here: stay correct, go eager
            _failed = True
            logger.warning("native CPU decode attention unavailable (%s: %s); using the "
                           "torch path", type(exc).__name__, str(exc).splitlines()[0][:200])
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
