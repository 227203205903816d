"""C++ sources of the cpu backend's native kernels (built by native.py).

Dimensions, as in the Triton and Pallas kernels: R rows (decode requests), Hq query heads,
Hkv KV heads, G = Hq / Hkv, D head size, N blocks, S block size, B max blocks per row,
L a row's context length, T tokens, I intermediate size.
"""

COMMON = r"""
#include <torch/extension.h>
#include <ATen/Parallel.h>
#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <memory>
#include <type_traits>
#include <vector>
#ifdef __AVX512F__
#include <immintrin.h>
#endif

// f(std::integral_constant<int, D / 16>) when the head size D is one of Ds (a kernel's
// vector forms, D / 16 registers a row); false, nothing called, for any other D.
template <int... Ds, typename F>
static inline bool with_head_size(int64_t D, F&& f) {
  return ((D == Ds ? (f(std::integral_constant<int, Ds / 16>{}), true) : false) || ...);
}

// exp(x), x clamped to [-87, 88]: 2^(x log2 e) split into 2^n * 2^f with |f| <= 1/2, 2^f by
// its degree-7 Taylor polynomial (relative error ~1e-8), 2^n through the exponent bits.
// Branch-free, so gcc vectorizes loops over it.
static inline float fast_exp(float x) {
  x = std::min(std::max(x, -87.0f), 88.0f);
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

// Vector forms (AVX-512 BF16 builds): round to bf16 kept as fp32, and fast_exp.
#ifdef __AVX512BF16__
static inline __m512 widen_bf16(__m256i h) {  // 16 bf16 -> fp32 (exact)
  return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16));
}

static inline __m512 round_bf16(__m512 v) {  // to the nearest bf16, kept as fp32
  return widen_bf16((__m256i)_mm512_cvtneps_pbh(v));
}

static inline __m512 exp16(__m512 x) {  // fast_exp, 16 lanes: the same bits
  x = _mm512_min_ps(_mm512_max_ps(x, _mm512_set1_ps(-87.f)), _mm512_set1_ps(88.f));
  const __m512 t = _mm512_mul_ps(x, _mm512_set1_ps(1.4426950408889634f));
  const __m512 n = _mm512_roundscale_ps(_mm512_add_ps(t, _mm512_set1_ps(0.5f)),
                                        _MM_FROUND_TO_NEG_INF | _MM_FROUND_NO_EXC);
  const __m512 f = _mm512_sub_ps(t, n);
  __m512 p = _mm512_set1_ps(1.5252733804059840e-5f);
  p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(1.5403530393381609e-4f));
  p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(1.3333558146428443e-3f));
  p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(9.6181291076284772e-3f));
  p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(5.5504108664821580e-2f));
  p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(2.4022650695910071e-1f));
  p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(6.9314718055994531e-1f));
  p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(1.0f));
  const __m512i bits = _mm512_slli_epi32(
      _mm512_add_epi32(_mm512_cvtps_epi32(n), _mm512_set1_epi32(127)), 23);
  return _mm512_mul_ps(p, _mm512_castsi512_ps(bits));
}
#endif
"""

FUSED = r"""
// Elementwise layers fused into one pass each (each replaces 2-10 small torch ops, whose
// per-op dispatch dominates at decode batch sizes). Numerics follow the torch modules:
// fp32 inside, rounding to the tensor dtype where torch rounds.

// out = weight * (x * rsqrt(mean(x^2) + eps)).to(dtype); x rows may be strided.
torch::Tensor rms_norm(torch::Tensor x, torch::Tensor weight, double eps) {
  TORCH_CHECK(x.dim() == 2 && x.stride(1) == 1 && weight.is_contiguous(), "rms_norm: 2-D rows");
  const int64_t rows = x.size(0), n = x.size(1), sx = x.stride(0);
  auto out = torch::empty({rows, n}, x.options());
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, x.scalar_type(), "rms_norm", [&] {
    const scalar_t* xp = x.data_ptr<scalar_t>();
    const scalar_t* wp = weight.data_ptr<scalar_t>();
    scalar_t* op = out.data_ptr<scalar_t>();
    at::parallel_for(0, rows, std::max<int64_t>(1, 32768 / n), [&](int64_t b, int64_t e) {
      for (int64_t r = b; r < e; ++r) {
        const scalar_t* xr = xp + r * sx;
        float ss = 0.f;
        for (int64_t i = 0; i < n; ++i) {
          const float v = static_cast<float>(xr[i]);
          ss += v * v;
        }
        const float inv = 1.f / std::sqrt(ss / static_cast<float>(n) + static_cast<float>(eps));
        for (int64_t i = 0; i < n; ++i) {
          const scalar_t rounded = static_cast<scalar_t>(static_cast<float>(xr[i]) * inv);
          const float normed = static_cast<float>(rounded);
          op[r * n + i] = static_cast<scalar_t>(static_cast<float>(wp[i]) * normed);
        }
      }
    });
  });
  return out;
}

// [T, 2I] (gate | up) -> silu(gate) * up, [T, I].
torch::Tensor silu_mul(torch::Tensor x) {
  TORCH_CHECK(x.dim() == 2 && x.is_contiguous(), "silu_mul: contiguous [T, 2I]");
  const int64_t rows = x.size(0), n = x.size(1) / 2;
  auto out = torch::empty({rows, n}, x.options());
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, x.scalar_type(), "silu_mul", [&] {
    const scalar_t* xp = x.data_ptr<scalar_t>();
    scalar_t* op = out.data_ptr<scalar_t>();
    at::parallel_for(0, rows, std::max<int64_t>(1, 16384 / n), [&](int64_t b, int64_t e) {
      for (int64_t r = b; r < e; ++r) {
        const scalar_t* g = xp + r * 2 * n;
        const scalar_t* u = g + n;
        int64_t i = 0;
#ifdef __AVX512BF16__
        if constexpr (std::is_same_v<scalar_t, at::BFloat16>) {  // 16 at a time, same bits
          auto widen = [](const scalar_t* p) {
            return widen_bf16(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(p)));
          };
          for (; i + 16 <= n; i += 16) {
            const __m512 gv = widen(g + i);
            const __m512 e = exp16(_mm512_sub_ps(_mm512_setzero_ps(), gv));
            const __m512 act = round_bf16(_mm512_div_ps(gv, _mm512_add_ps(_mm512_set1_ps(1.f), e)));
            _mm256_storeu_si256(reinterpret_cast<__m256i*>(op + r * n + i),
                                (__m256i)_mm512_cvtneps_pbh(_mm512_mul_ps(act, widen(u + i))));
          }
        }
#endif
        for (; i < n; ++i) {
          const float gv = static_cast<float>(g[i]);
          const float act = static_cast<float>(static_cast<scalar_t>(gv / (1.f + fast_exp(-gv))));
          op[r * n + i] = static_cast<scalar_t>(act * static_cast<float>(u[i]));
        }
      }
    });
  });
  return out;
}

// The first index of a row's maximum (a NaN, if any, counts as the maximum, as in
// torch.argmax): one max pass, then a scan for its first index; 16 lanes at a time where the
// build has AVX-512 (-march=native), else a plain loop.
static int64_t argmax_row(const float* x, int64_t n) {
  int64_t i = 0;
  float mx = -INFINITY;
  bool nan = false;
#ifdef __AVX512F__
  __m512 vmax = _mm512_set1_ps(-INFINITY);
  __mmask16 unordered = 0;
  for (; i + 16 <= n; i += 16) {
    const __m512 v = _mm512_loadu_ps(x + i);
    unordered |= _mm512_cmp_ps_mask(v, v, _CMP_UNORD_Q);
    vmax = _mm512_max_ps(vmax, v);
  }
  mx = _mm512_reduce_max_ps(vmax);
  nan = unordered != 0;
#endif
  for (; i < n; ++i) {
    mx = x[i] > mx ? x[i] : mx;
    nan |= x[i] != x[i];
  }
  i = 0;
#ifdef __AVX512F__
  const __m512 target = _mm512_set1_ps(mx);
  for (; i + 16 <= n; i += 16) {
    const __m512 v = _mm512_loadu_ps(x + i);
    const __mmask16 hit = nan ? _mm512_cmp_ps_mask(v, v, _CMP_UNORD_Q)
                              : _mm512_cmp_ps_mask(v, target, _CMP_EQ_OQ);
    if (hit) return i + __builtin_ctz(hit);
  }
#endif
  for (; i < n; ++i)
    if (nan ? x[i] != x[i] : x[i] == mx) return i;
  return 0;
}

// x [S, V] fp32 rows -> [S] int64 argmax per row.
torch::Tensor argmax_rows(torch::Tensor x) {
  TORCH_CHECK(x.dim() == 2 && x.stride(1) == 1 && x.scalar_type() == torch::kFloat,
              "argmax_rows: fp32 [S, V] with contiguous rows");
  const int64_t rows = x.size(0), n = x.size(1), sx = x.stride(0);
  auto out = torch::empty({rows}, x.options().dtype(torch::kLong));
  const float* xp = x.data_ptr<float>();
  int64_t* op = out.data_ptr<int64_t>();
  at::parallel_for(0, rows, std::max<int64_t>(1, 65536 / std::max<int64_t>(n, 1)),
                   [&](int64_t b, int64_t e) {
    for (int64_t r = b; r < e; ++r) op[r] = argmax_row(xp + r * sx, n);
  });
  return out;
}

// In place: x [T, Hq, D] (rows strided, heads contiguous) rotated by the rotate-half rule with
// cos/sin [T, D] fp32 rows: x * cos + rotate_half(x) * sin.
template <typename T>
static void rotate(T* x, int64_t st, int64_t sh, int64_t tokens, int64_t heads, int64_t D,
                   const float* cos, const float* sin) {
  const int64_t half = D / 2;
  at::parallel_for(0, tokens, std::max<int64_t>(1, 4096 / (heads * D)), [&](int64_t b, int64_t e) {
    for (int64_t t = b; t < e; ++t) {
      const float* c = cos + t * D;
      const float* s = sin + t * D;
      for (int64_t h = 0; h < heads; ++h) {
        T* p = x + t * st + h * sh;
        for (int64_t i = 0; i < half; ++i) {
          const float a = static_cast<float>(p[i]), bb = static_cast<float>(p[i + half]);
          p[i] = static_cast<T>(a * c[i] - bb * s[i]);
          p[i + half] = static_cast<T>(bb * c[i + half] + a * s[i + half]);
        }
      }
    }
  });
}

void rope_inplace(torch::Tensor q, torch::Tensor k, torch::Tensor cos, torch::Tensor sin) {
  TORCH_CHECK(q.dim() == 3 && k.dim() == 3 && q.stride(2) == 1 && k.stride(2) == 1,
              "rope: [T, Hq, D] with contiguous heads");
  TORCH_CHECK(cos.scalar_type() == torch::kFloat && cos.is_contiguous() && sin.is_contiguous(),
              "rope: fp32 contiguous cos/sin [T, D]");
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, q.scalar_type(), "rope", [&] {
    rotate<scalar_t>(q.data_ptr<scalar_t>(), q.stride(0), q.stride(1), q.size(0), q.size(1),
                     q.size(2), cos.data_ptr<float>(), sin.data_ptr<float>());
    rotate<scalar_t>(k.data_ptr<scalar_t>(), k.stride(0), k.stride(1), k.size(0), k.size(1),
                     k.size(2), cos.data_ptr<float>(), sin.data_ptr<float>());
  });
}
"""
