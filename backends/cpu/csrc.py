"""C++ sources of the cpu backend's native kernels (built by native.py).

Dimensions, as in the Triton and Pallas kernels: R rows (decode requests), Hq query heads,
Hkv KV heads, G = Hq / Hkv, D head size, N blocks, S block size, B max blocks per row,
L a row's context length, T tokens, I intermediate size.
"""

COMMON = r"""
#include <torch/extension.h>
#include <ATen/Parallel.h>
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <memory>
#include <type_traits>
#include <vector>
#ifdef __AVX512F__
#include <immintrin.h>
#endif

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
"""

DECODE = r"""
// One job: row r's query heads of KV heads [k0, k1). Per block, all those heads' keys of a
// token are contiguous in the [N, S, Hkv, RS] cache, so the job streams memory in order:
// scores for the block's tokens, a softmax update per head, then the weighted values.
// Plain caches: CT = T, RS = D. 8-bit caches (QUANT): each (token, head) row is D values of
// CT (int8 or fp8 e4m3) then its float32 scale (RS = D + 4 bytes): the scale multiplies the
// row's dot product (keys) or its weight (values).
template <typename CT, bool QUANT>
static inline float row_scale(const CT* row, int64_t D) {
  if constexpr (!QUANT) {
    return 1.f;
  } else {
    float s;
    std::memcpy(&s, reinterpret_cast<const char*>(row + D), sizeof(s));
    return s;
  }
}

// One query head against a block's n widened rows (row t at rows + t * stride): its scores
// s[t] = q . k_t, and acc += sum_t s[t] * v_t. NC = D / 16 vectors held in registers (AVX-512,
// D of 32, 64, 128 or 256); any other D, or no AVX-512, the plain loops.
#ifdef __AVX512F__
template <int NC>
static inline void block_scores_v(const float* q, const float* rows, int64_t n, int64_t stride,
                                  float* s) {
  __m512 qv[NC];
  for (int c = 0; c < NC; ++c) qv[c] = _mm512_loadu_ps(q + 16 * c);
  for (int64_t t = 0; t < n; ++t) {
    const float* k = rows + t * stride;
    __m512 d = _mm512_mul_ps(qv[0], _mm512_loadu_ps(k));
    for (int c = 1; c < NC; ++c) d = _mm512_fmadd_ps(qv[c], _mm512_loadu_ps(k + 16 * c), d);
    s[t] = _mm512_reduce_add_ps(d);
  }
}

template <int NC>
static inline void block_pv_v(const float* s, const float* rows, int64_t n, int64_t stride,
                              float* acc) {
  __m512 a[NC];
  for (int c = 0; c < NC; ++c) a[c] = _mm512_loadu_ps(acc + 16 * c);
  for (int64_t t = 0; t < n; ++t) {
    const __m512 p = _mm512_set1_ps(s[t]);
    const float* v = rows + t * stride;
    for (int c = 0; c < NC; ++c) a[c] = _mm512_fmadd_ps(p, _mm512_loadu_ps(v + 16 * c), a[c]);
  }
  for (int c = 0; c < NC; ++c) _mm512_storeu_ps(acc + 16 * c, a[c]);
}
#endif

static inline void block_scores(const float* q, const float* rows, int64_t n, int64_t stride,
                                int64_t D, float* s) {
#ifdef __AVX512F__
  switch (D) {
    case 32: return block_scores_v<2>(q, rows, n, stride, s);
    case 64: return block_scores_v<4>(q, rows, n, stride, s);
    case 128: return block_scores_v<8>(q, rows, n, stride, s);
    case 256: return block_scores_v<16>(q, rows, n, stride, s);
    default: break;
  }
#endif
  for (int64_t t = 0; t < n; ++t) {
    const float* k = rows + t * stride;
    float dot = 0.f;
    for (int64_t d = 0; d < D; ++d) dot += q[d] * k[d];
    s[t] = dot;
  }
}

static inline void block_pv(const float* s, const float* rows, int64_t n, int64_t stride,
                            int64_t D, float* acc) {
#ifdef __AVX512F__
  switch (D) {
    case 32: return block_pv_v<2>(s, rows, n, stride, acc);
    case 64: return block_pv_v<4>(s, rows, n, stride, acc);
    case 128: return block_pv_v<8>(s, rows, n, stride, acc);
    case 256: return block_pv_v<16>(s, rows, n, stride, acc);
    default: break;
  }
#endif
  for (int64_t t = 0; t < n; ++t)
    for (int64_t d = 0; d < D; ++d) acc[d] += s[t] * rows[t * stride + d];
}

// A block's K or V rows of KV heads [k0, k1) widened to float32 once, [n, hk, D] (plain
// caches; bf16 through its bit pattern, which gcc vectorizes, where a per-element cast does
// not), so the scores and the weighted sum below are float loops.
template <typename CT>
static inline void widen_rows(const CT* src, float* dst, int64_t n, int64_t Hkv, int64_t hk,
                              int64_t D) {
  for (int64_t t = 0; t < n; ++t) {
    const CT* s = src + t * Hkv * D;
    float* d = dst + t * hk * D;
    if constexpr (std::is_same_v<CT, c10::BFloat16>) {
      const uint16_t* raw = reinterpret_cast<const uint16_t*>(s);
      uint32_t* out = reinterpret_cast<uint32_t*>(d);
      for (int64_t i = 0; i < hk * D; ++i) out[i] = static_cast<uint32_t>(raw[i]) << 16;
    } else {
      for (int64_t i = 0; i < hk * D; ++i) d[i] = static_cast<float>(s[i]);
    }
  }
}

template <typename T, typename CT, bool QUANT>
static void decode_job(const T* q, const CT* kc, const CT* vc, const int32_t* bt, int64_t L,
                       T* out, int64_t Hq, int64_t Hkv, int64_t D, int64_t RS, int64_t S,
                       int64_t k0, int64_t k1, float scale, int64_t window, float soft_cap,
                       float* qf, float* acc, float* m, float* l, float* s, float* kvf) {
  const int64_t G = Hq / Hkv, hk = k1 - k0, hc = hk * G, h0 = k0 * G;
  for (int64_t i = 0; i < hc * D; ++i) qf[i] = static_cast<float>(q[h0 * D + i]) * scale;
  std::fill(acc, acc + hc * D, 0.f);
  std::fill(m, m + hc, -INFINITY);
  std::fill(l, l + hc, 0.f);
  const int64_t first = window > 0 ? std::max<int64_t>(0, L - window) : 0;
  for (int64_t b = first / S; b * S < L; ++b) {
    const int64_t blk = bt[b];
    const int64_t t0 = std::max(b * S, first), t1 = std::min((b + 1) * S, L), n = t1 - t0;
    const CT* kb = kc + (blk * S + (t0 - b * S)) * Hkv * RS;
    const CT* vb = vc + (blk * S + (t0 - b * S)) * Hkv * RS;
    if constexpr (!QUANT) {
      widen_rows(kb + k0 * D, kvf, n, Hkv, hk, D);
      for (int64_t h = 0; h < hc; ++h)
        block_scores(qf + h * D, kvf + (h / G) * D, n, hk * D, D, s + h * S);
    } else {
      for (int64_t t = 0; t < n; ++t) {
        const CT* krow = kb + (t * Hkv + k0) * RS;
        for (int64_t h = 0; h < hc; ++h) {
          const CT* kp = krow + (h / G) * RS;
          const float* qp = qf + h * D;
          float dot = 0.f;
          for (int64_t d = 0; d < D; ++d) dot += qp[d] * static_cast<float>(kp[d]);
          s[h * S + t] = dot * row_scale<CT, QUANT>(kp, D);
        }
      }
    }
    for (int64_t h = 0; h < hc; ++h) {
      float* sh = s + h * S;
      if (soft_cap > 0.f)
        for (int64_t t = 0; t < n; ++t) sh[t] = soft_cap * std::tanh(sh[t] / soft_cap);
      float bmax = -INFINITY;
      for (int64_t t = 0; t < n; ++t) bmax = std::max(bmax, sh[t]);
      const float new_m = std::max(m[h], bmax);
      const float correction = fast_exp(m[h] - new_m);
      float sum = 0.f;
      for (int64_t t = 0; t < n; ++t) {
        sh[t] = fast_exp(sh[t] - new_m);
        sum += sh[t];
      }
      l[h] = l[h] * correction + sum;
      m[h] = new_m;
      float* ap = acc + h * D;
      for (int64_t d = 0; d < D; ++d) ap[d] *= correction;
    }
    if constexpr (!QUANT) {
      widen_rows(vb + k0 * D, kvf, n, Hkv, hk, D);
      for (int64_t h = 0; h < hc; ++h)
        block_pv(s + h * S, kvf + (h / G) * D, n, hk * D, D, acc + h * D);
    } else {
      for (int64_t t = 0; t < n; ++t) {
        const CT* vrow = vb + (t * Hkv + k0) * RS;
        for (int64_t h = 0; h < hc; ++h) {
          const CT* vp = vrow + (h / G) * RS;
          const float p = s[h * S + t] * row_scale<CT, QUANT>(vp, D);
          float* ap = acc + h * D;
          for (int64_t d = 0; d < D; ++d) ap[d] += p * static_cast<float>(vp[d]);
        }
      }
    }
  }
  for (int64_t h = 0; h < hc; ++h)
    for (int64_t d = 0; d < D; ++d)
      out[(h0 + h) * D + d] = static_cast<T>(acc[h * D + d] / l[h]);
}

template <typename T, typename CT, bool QUANT>
static void decode_rows(const T* q, const CT* kc, const CT* vc, const int32_t* bt,
                        const int32_t* lens, T* out, int64_t R, int64_t Hq, int64_t Hkv,
                        int64_t D, int64_t RS, int64_t S, int64_t B, float scale,
                        int64_t window, float soft_cap) {
  // Rows are the unit of work; with fewer rows than ~2 per thread, KV heads are split too.
  const int64_t threads = at::get_num_threads();
  const int64_t chunks = std::min<int64_t>(Hkv, std::max<int64_t>(1, (2 * threads + R - 1) / R));
  const int64_t per_chunk = (Hkv + chunks - 1) / chunks;
  const int64_t G = Hq / Hkv;
  at::parallel_for(0, R * chunks, 1, [&](int64_t begin, int64_t end) {
    const int64_t hc = per_chunk * G;
    std::vector<float> qf(hc * D), acc(hc * D), m(hc), l(hc), s(hc * S);
    std::vector<float> kvf(S * per_chunk * D);  // a block's K or V rows, widened
    for (int64_t job = begin; job < end; ++job) {
      const int64_t r = job / chunks, c = job % chunks;
      const int64_t k0 = c * per_chunk, k1 = std::min(Hkv, k0 + per_chunk);
      if (k0 >= k1) continue;
      decode_job<T, CT, QUANT>(q + r * Hq * D, kc, vc, bt + r * B, lens[r], out + r * Hq * D,
                               Hq, Hkv, D, RS, S, k0, k1, scale, window, soft_cap, qf.data(),
                               acc.data(), m.data(), l.data(), s.data(), kvf.data());
    }
  });
}

// kc, vc: [N, S, Hkv, D] in q's dtype; or, with kv_kind 1 (int8) / 2 (fp8 e4m3), uint8
// [N, S, Hkv, D + 4] rows of values then a float32 scale.
torch::Tensor paged_decode(torch::Tensor q, torch::Tensor kc, torch::Tensor vc,
                           torch::Tensor bt, torch::Tensor lens, double scale, int64_t window,
                           double soft_cap, int64_t kv_kind) {
  TORCH_CHECK(q.is_contiguous() && kc.is_contiguous() && vc.is_contiguous() &&
              bt.is_contiguous() && lens.is_contiguous(), "contiguous inputs expected");
  TORCH_CHECK(bt.scalar_type() == torch::kInt32 && lens.scalar_type() == torch::kInt32,
              "block table and lengths must be int32");
  auto out = torch::empty_like(q);
  const int64_t R = q.size(0), Hq = q.size(1), D = q.size(2);
  const int64_t S = kc.size(1), Hkv = kc.size(2), B = bt.size(1), RS = kc.size(3);
  TORCH_CHECK(kv_kind == 0 ? RS == D : (RS == D + 4 && kc.scalar_type() == torch::kUInt8),
              "cache rows do not match the KV kind");
  const float sc = static_cast<float>(scale), cap = static_cast<float>(soft_cap);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, q.scalar_type(), "paged_decode", [&] {
    const scalar_t* qp = q.data_ptr<scalar_t>();
    scalar_t* op = out.data_ptr<scalar_t>();
    const int32_t* btp = bt.data_ptr<int32_t>();
    const int32_t* lp = lens.data_ptr<int32_t>();
    if (kv_kind == 0) {
      decode_rows<scalar_t, scalar_t, false>(qp, kc.data_ptr<scalar_t>(),
          vc.data_ptr<scalar_t>(), btp, lp, op, R, Hq, Hkv, D, D, S, B, sc, window, cap);
    } else if (kv_kind == 1) {
      decode_rows<scalar_t, int8_t, true>(qp,
          reinterpret_cast<const int8_t*>(kc.data_ptr<uint8_t>()),
          reinterpret_cast<const int8_t*>(vc.data_ptr<uint8_t>()), btp, lp, op, R, Hq, Hkv, D,
          RS, S, B, sc, window, cap);
    } else {
      decode_rows<scalar_t, c10::Float8_e4m3fn, true>(qp,
          reinterpret_cast<const c10::Float8_e4m3fn*>(kc.data_ptr<uint8_t>()),
          reinterpret_cast<const c10::Float8_e4m3fn*>(vc.data_ptr<uint8_t>()), btp, lp, op, R,
          Hq, Hkv, D, RS, S, B, sc, window, cap);
    }
  });
  return out;
}
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
        for (int64_t i = 0; i < n; ++i) {
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
