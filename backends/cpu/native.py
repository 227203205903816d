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
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <vector>

// exp(x) for x <= 0 (scores minus a running max): 2^(x log2 e) split into 2^n * 2^f with
// |f| <= 1/2, 2^f by its degree-7 Taylor polynomial (relative error ~1e-8), 2^n through
// the exponent bits. Branch-free, so gcc vectorizes loops over it.
static inline float exp_nonpositive(float x) {
  x = std::max(x, -87.0f);
  const float t = x * 1.4426950408889634f;
  const float n = std::floor(t + 0.5f);
  const float f = t - n;
  float p = 1.5252733804059840e-5f;
  p = p * f + 1.5403530393381609e-4f;
  p = p * f + 1.3333558146428443e-3f;
  p = p * f + 9.6181291076284772e-3f;
  p = p * f + 5.5504108664821580e-2f;
  p = p * f + 2.4022650695910071e-1f;
  p = p * f + 6.9314718055994531e-1f;
  p = p * f + 1.0f;
  const int32_t bits = (static_cast<int32_t>(n) + 127) << 23;
  float scale;
  std::memcpy(&scale, &bits, sizeof(scale));
  return p * scale;
}

// One job: row r's query heads of KV heads [k0, k1). Per block, all those heads' keys of a
// token are contiguous in the [N, S, K, D] cache, so the job streams memory in order:
// scores for the block's tokens, a softmax update per head, then the weighted values.
template <typename T>
static void decode_job(const T* q, const T* kc, const T* vc, const int32_t* bt, int64_t L,
                       T* out, int64_t H, int64_t K, int64_t D, int64_t S, int64_t k0,
                       int64_t k1, float scale, int64_t window, float soft_cap,
                       float* qf, float* acc, float* m, float* l, float* s) {
  const int64_t G = H / K, hc = (k1 - k0) * G, h0 = k0 * G;
  for (int64_t i = 0; i < hc * D; ++i) qf[i] = static_cast<float>(q[h0 * D + i]) * scale;
  std::fill(acc, acc + hc * D, 0.f);
  std::fill(m, m + hc, -INFINITY);
  std::fill(l, l + hc, 0.f);
  const int64_t first = window > 0 ? std::max<int64_t>(0, L - window) : 0;
  for (int64_t b = first / S; b * S < L; ++b) {
    const int64_t blk = bt[b];
    const int64_t t0 = std::max(b * S, first), t1 = std::min((b + 1) * S, L), n = t1 - t0;
    const T* kb = kc + (blk * S + (t0 - b * S)) * K * D;
    const T* vb = vc + (blk * S + (t0 - b * S)) * K * D;
    for (int64_t t = 0; t < n; ++t) {
      const T* krow = kb + (t * K + k0) * D;
      for (int64_t h = 0; h < hc; ++h) {
        const T* kp = krow + (h / G) * D;
        const float* qp = qf + h * D;
        float dot = 0.f;
        for (int64_t d = 0; d < D; ++d) dot += qp[d] * static_cast<float>(kp[d]);
        s[h * S + t] = dot;
      }
    }
    for (int64_t h = 0; h < hc; ++h) {
      float* sh = s + h * S;
      if (soft_cap > 0.f)
        for (int64_t t = 0; t < n; ++t) sh[t] = soft_cap * std::tanh(sh[t] / soft_cap);
      float bmax = -INFINITY;
      for (int64_t t = 0; t < n; ++t) bmax = std::max(bmax, sh[t]);
      const float new_m = std::max(m[h], bmax);
      const float correction = exp_nonpositive(m[h] - new_m);
      float sum = 0.f;
      for (int64_t t = 0; t < n; ++t) {
        sh[t] = exp_nonpositive(sh[t] - new_m);
        sum += sh[t];
      }
      l[h] = l[h] * correction + sum;
      m[h] = new_m;
      float* ap = acc + h * D;
      for (int64_t d = 0; d < D; ++d) ap[d] *= correction;
    }
    for (int64_t t = 0; t < n; ++t) {
      const T* vrow = vb + (t * K + k0) * D;
      for (int64_t h = 0; h < hc; ++h) {
        const T* vp = vrow + (h / G) * D;
        const float p = s[h * S + t];
        float* ap = acc + h * D;
        for (int64_t d = 0; d < D; ++d) ap[d] += p * static_cast<float>(vp[d]);
      }
    }
  }
  for (int64_t h = 0; h < hc; ++h)
    for (int64_t d = 0; d < D; ++d)
      out[(h0 + h) * D + d] = static_cast<T>(acc[h * D + d] / l[h]);
}

template <typename T>
static void decode_rows(const T* q, const T* kc, const T* vc, const int32_t* bt,
                        const int32_t* lens, T* out, int64_t R, int64_t H, int64_t K,
                        int64_t D, int64_t S, int64_t B, float scale, int64_t window,
                        float soft_cap) {
  // Rows are the unit of work; with fewer rows than ~2 per thread, KV heads are split too.
  const int64_t threads = at::get_num_threads();
  const int64_t chunks = std::min<int64_t>(K, std::max<int64_t>(1, (2 * threads + R - 1) / R));
  const int64_t per_chunk = (K + chunks - 1) / chunks;
  const int64_t G = H / K;
  at::parallel_for(0, R * chunks, 1, [&](int64_t begin, int64_t end) {
    const int64_t hc = per_chunk * G;
    std::vector<float> qf(hc * D), acc(hc * D), m(hc), l(hc), s(hc * S);
    for (int64_t job = begin; job < end; ++job) {
      const int64_t r = job / chunks, c = job % chunks;
      const int64_t k0 = c * per_chunk, k1 = std::min(K, k0 + per_chunk);
      if (k0 >= k1) continue;
      decode_job<T>(q + r * H * D, kc, vc, bt + r * B, lens[r], out + r * H * D, H, K, D, S,
                    k0, k1, scale, window, soft_cap, qf.data(), acc.data(), m.data(),
                    l.data(), s.data());
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
                name="quire_cpu_paged_decode_v2", cpp_sources=[_SOURCE],
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
