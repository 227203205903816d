"""C++ source of the cpu backend's weight-only quantized matmul (built by quant_native.py).

Layout: quire.models.quant.PackedWeight — N output rows, K inputs, groups of GS inputs
(32; 16 for Q6_K's 8-bit values), w = scale * q + min per (row, group); 4-bit q as GGUF
keeps it (byte j of a group of 32: input j low nibble, input j + 16 high nibble), 8-bit q as
signed bytes; scales and mins float16 (S = uint16_t) or float32 (K-quants).

Paths, chosen at run time by what the CPU reports: AVX-512 (F + BW + VL, with FMA and F16C:
16-float vectors, one per 16 inputs), else AVX2 + FMA + F16C (8-float vectors), else portable
C++. The SIMD functions carry target attributes, so one build serves every x86-64 machine.
"""

SOURCE = r"""
#include <torch/extension.h>
#include <ATen/Parallel.h>
#include <c10/util/Half.h>
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <string>
#include <vector>

static inline float sval(uint16_t h) {
  return static_cast<float>(c10::Half(h, c10::Half::from_bits()));
}
static inline float sval(float f) { return f; }

// Group g's weights of row n as floats, portable.
template <int BITS, int GS>
static inline void unpack_group(const uint8_t* qw, int64_t K, int64_t n, int64_t g, float* w) {
  if (BITS == 4) {  // GS == 32
    const uint8_t* q = qw + n * (K / 2) + g * 16;
    for (int j = 0; j < 16; ++j) {
      w[j] = static_cast<float>(q[j] & 15);
      w[j + 16] = static_cast<float>(q[j] >> 4);
    }
  } else {
    const int8_t* q = reinterpret_cast<const int8_t*>(qw) + n * K + g * GS;
    for (int j = 0; j < GS; ++j) w[j] = static_cast<float>(q[j]);
  }
}

// Rows [n0, n1) of y[M, N] = x[M, K] W^T, portable. xsum[M, K/GS]: each group's sum of x
// (the min term). The weights stream once for all M rows.
template <int BITS, int GS, typename S>
static void gemv_rows_portable(const float* x, const float* xsum, const uint8_t* qw,
                               const S* sc, const S* mn, float* y, int64_t M, int64_t N,
                               int64_t K, int64_t n0, int64_t n1) {
  const int64_t G = K / GS;
  float w[32];
  for (int64_t n = n0; n < n1; ++n) {
    for (int64_t m = 0; m < M; ++m) y[m * N + n] = 0.f;
    for (int64_t g = 0; g < G; ++g) {
      unpack_group<BITS, GS>(qw, K, n, g, w);
      const float s = sval(sc[n * G + g]), b = mn ? sval(mn[n * G + g]) : 0.f;
      for (int64_t m = 0; m < M; ++m) {
        const float* xm = x + m * K + g * GS;
        float d = 0.f;
        for (int j = 0; j < GS; ++j) d += w[j] * xm[j];
        y[m * N + n] += s * d + b * xsum[m * G + g];
      }
    }
  }
}

#if defined(__x86_64__) && defined(__GNUC__)
#include <immintrin.h>
#define QUIRE_AVX2 __attribute__((target("avx2,fma,f16c")))

QUIRE_AVX2 static inline float sval_avx(uint16_t h) { return _cvtsh_ss(h); }
QUIRE_AVX2 static inline float sval_avx(float f) { return f; }
QUIRE_AVX2 static inline __m256 svec8(const uint16_t* p) {
  return _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p)));
}
QUIRE_AVX2 static inline __m256 svec8(const float* p) { return _mm256_loadu_ps(p); }

QUIRE_AVX2 static inline float hsum(__m256 v) {
  const __m128 h = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  const __m128 h2 = _mm_add_ps(h, _mm_movehl_ps(h, h));
  return _mm_cvtss_f32(_mm_add_ss(h2, _mm_shuffle_ps(h2, h2, 1)));
}

// sum_g min[n, g] * xsum[row, g], eight groups at a time.
template <typename S>
QUIRE_AVX2 static inline float min_term(const S* mn, const float* xsum, int64_t G, int64_t n,
                                        int64_t row) {
  __m256 v = _mm256_setzero_ps();
  int64_t g = 0;
  for (; g + 8 <= G; g += 8)
    v = _mm256_fmadd_ps(svec8(mn + n * G + g), _mm256_loadu_ps(xsum + row * G + g), v);
  float tail = 0.f;
  for (; g < G; ++g) tail += sval_avx(mn[n * G + g]) * xsum[row * G + g];
  return hsum(v) + tail;
}

// Float activations (exact up to float rounding), MC rows at once (a compile-time count,
// so the accumulators live in registers): every 32 inputs' weights become four 8-float
// vectors once, then four FMAs per row and one per group scale.
template <int BITS, int GS, typename S, int MC>
QUIRE_AVX2 static inline void tile_f32(const float* x, const float* xsum, const uint8_t* qw,
                                       const S* sc, const S* mn, float* y, int64_t m0,
                                       int64_t N, int64_t K, int64_t n) {
  const int64_t G = K / GS;
  const __m128i low4 = _mm_set1_epi8(0x0F);
  __m256 acc[MC];
  for (int m = 0; m < MC; ++m) acc[m] = _mm256_setzero_ps();
  for (int64_t c = 0; c < K / 32; ++c) {  // 32 inputs: one group, or two of 16
    __m256 w0, w1, w2, w3;
    if (BITS == 4) {
      const __m128i q =
          _mm_loadu_si128(reinterpret_cast<const __m128i*>(qw + n * (K / 2) + c * 16));
      const __m128i lo = _mm_and_si128(q, low4);
      const __m128i hi = _mm_and_si128(_mm_srli_epi16(q, 4), low4);
      w0 = _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(lo));
      w1 = _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(_mm_srli_si128(lo, 8)));
      w2 = _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(hi));
      w3 = _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(_mm_srli_si128(hi, 8)));
    } else {
      const uint8_t* p = qw + n * K + c * 32;
      const __m128i a = _mm_loadu_si128(reinterpret_cast<const __m128i*>(p));
      const __m128i b = _mm_loadu_si128(reinterpret_cast<const __m128i*>(p + 16));
      w0 = _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(a));
      w1 = _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_srli_si128(a, 8)));
      w2 = _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(b));
      w3 = _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_srli_si128(b, 8)));
    }
    if (GS == 32) {
      const __m256 s = _mm256_set1_ps(sval_avx(sc[n * G + c]));
      for (int m = 0; m < MC; ++m) {
        const float* xm = x + (m0 + m) * K + c * 32;
        __m256 d = _mm256_mul_ps(w0, _mm256_loadu_ps(xm));
        d = _mm256_fmadd_ps(w1, _mm256_loadu_ps(xm + 8), d);
        d = _mm256_fmadd_ps(w2, _mm256_loadu_ps(xm + 16), d);
        d = _mm256_fmadd_ps(w3, _mm256_loadu_ps(xm + 24), d);
        acc[m] = _mm256_fmadd_ps(d, s, acc[m]);
      }
    } else {  // GS == 16 (8-bit only): inputs 0..15 and 16..31 have their own scales
      const __m256 s0 = _mm256_set1_ps(sval_avx(sc[n * G + 2 * c]));
      const __m256 s1 = _mm256_set1_ps(sval_avx(sc[n * G + 2 * c + 1]));
      for (int m = 0; m < MC; ++m) {
        const float* xm = x + (m0 + m) * K + c * 32;
        const __m256 d0 = _mm256_fmadd_ps(w1, _mm256_loadu_ps(xm + 8),
                                          _mm256_mul_ps(w0, _mm256_loadu_ps(xm)));
        const __m256 d1 = _mm256_fmadd_ps(w3, _mm256_loadu_ps(xm + 24),
                                          _mm256_mul_ps(w2, _mm256_loadu_ps(xm + 16)));
        acc[m] = _mm256_fmadd_ps(d1, s1, _mm256_fmadd_ps(d0, s0, acc[m]));
      }
    }
  }
  for (int m = 0; m < MC; ++m)
    y[(m0 + m) * N + n] = hsum(acc[m]) + (mn ? min_term(mn, xsum, G, n, m0 + m) : 0.f);
}

template <int BITS, int GS, typename S>
QUIRE_AVX2 static void gemv_rows_f32(const float* x, const float* xsum, const uint8_t* qw,
                                     const S* sc, const S* mn, float* y, int64_t M, int64_t N,
                                     int64_t K, int64_t n0, int64_t n1) {
  // Up to 8 rows per pass over a weight row (each pass unpacks the weights once).
  for (int64_t n = n0; n < n1; ++n) {
    for (int64_t m0 = 0; m0 < M; m0 += 8) {
      switch (std::min<int64_t>(8, M - m0)) {
#define QUIRE_TILE(R) case R: tile_f32<BITS, GS, S, R>(x, xsum, qw, sc, mn, y, m0, N, K, n); break;
        QUIRE_TILE(1) QUIRE_TILE(2) QUIRE_TILE(3) QUIRE_TILE(4)
        QUIRE_TILE(5) QUIRE_TILE(6) QUIRE_TILE(7) QUIRE_TILE(8)
#undef QUIRE_TILE
      }
    }
  }
}

// The same float tile with 16-float vectors: 32 inputs' weights become two vectors (inputs
// 0..15, 16..31 — for 4-bit, a group's low and high nibbles), then two FMAs per row.
#define QUIRE_AVX512 __attribute__((target("avx512f,avx512bw,avx512vl,avx2,fma,f16c")))

QUIRE_AVX512 static inline __m512 widen16(__m128i bytes, bool is_signed) {
  return _mm512_cvtepi32_ps(is_signed ? _mm512_cvtepi8_epi32(bytes)
                                      : _mm512_cvtepu8_epi32(bytes));
}

template <int BITS, int GS, typename S, int MC>
QUIRE_AVX512 static inline void tile_f32_512(const float* x, const float* xsum,
                                             const uint8_t* qw, const S* sc, const S* mn,
                                             float* y, int64_t m0, int64_t N, int64_t K,
                                             int64_t n) {
  const int64_t G = K / GS;
  const __m128i low4 = _mm_set1_epi8(0x0F);
  __m512 acc[MC];
  for (int m = 0; m < MC; ++m) acc[m] = _mm512_setzero_ps();
  for (int64_t c = 0; c < K / 32; ++c) {
    __m512 w0, w1;
    if (BITS == 4) {
      const __m128i q =
          _mm_loadu_si128(reinterpret_cast<const __m128i*>(qw + n * (K / 2) + c * 16));
      w0 = widen16(_mm_and_si128(q, low4), false);
      w1 = widen16(_mm_and_si128(_mm_srli_epi16(q, 4), low4), false);
    } else {
      const uint8_t* p = qw + n * K + c * 32;
      w0 = widen16(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p)), true);
      w1 = widen16(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p + 16)), true);
    }
    if (GS == 32) {
      const __m512 s = _mm512_set1_ps(sval_avx(sc[n * G + c]));
      for (int m = 0; m < MC; ++m) {
        const float* xm = x + (m0 + m) * K + c * 32;
        const __m512 d = _mm512_fmadd_ps(w1, _mm512_loadu_ps(xm + 16),
                                         _mm512_mul_ps(w0, _mm512_loadu_ps(xm)));
        acc[m] = _mm512_fmadd_ps(d, s, acc[m]);
      }
    } else {  // GS == 16: each vector is one group
      const __m512 s0 = _mm512_set1_ps(sval_avx(sc[n * G + 2 * c]));
      const __m512 s1 = _mm512_set1_ps(sval_avx(sc[n * G + 2 * c + 1]));
      for (int m = 0; m < MC; ++m) {
        const float* xm = x + (m0 + m) * K + c * 32;
        acc[m] = _mm512_fmadd_ps(_mm512_mul_ps(w1, _mm512_loadu_ps(xm + 16)), s1,
                                 _mm512_fmadd_ps(_mm512_mul_ps(w0, _mm512_loadu_ps(xm)), s0,
                                                 acc[m]));
      }
    }
  }
  for (int m = 0; m < MC; ++m)
    y[(m0 + m) * N + n] =
        _mm512_reduce_add_ps(acc[m]) + (mn ? min_term(mn, xsum, G, n, m0 + m) : 0.f);
}

template <int BITS, int GS, typename S>
QUIRE_AVX512 static void gemv_rows_f32_512(const float* x, const float* xsum,
                                           const uint8_t* qw, const S* sc, const S* mn,
                                           float* y, int64_t M, int64_t N, int64_t K,
                                           int64_t n0, int64_t n1) {
  for (int64_t n = n0; n < n1; ++n) {
    for (int64_t m0 = 0; m0 < M; m0 += 8) {
      switch (std::min<int64_t>(8, M - m0)) {
#define QUIRE_TILE(R) \
  case R: tile_f32_512<BITS, GS, S, R>(x, xsum, qw, sc, mn, y, m0, N, K, n); break;
        QUIRE_TILE(1) QUIRE_TILE(2) QUIRE_TILE(3) QUIRE_TILE(4)
        QUIRE_TILE(5) QUIRE_TILE(6) QUIRE_TILE(7) QUIRE_TILE(8)
#undef QUIRE_TILE
      }
    }
  }
}

// 8-bit activations (llama.cpp's scheme; groups of 32, float16 scales only): each row of x
// is quantized per group of 32 to int8 with its own scale (xq, xd), so a group's dot product
// is two integer instructions (maddubs: unsigned x signed bytes -> int16 pairs; madd ->
// int32) and one FMA with the two scales. 4-bit weights are unsigned (0..15); 8-bit ones
// signed, handled as |w| times x carrying w's sign. Faster, not exact.
template <int BITS, int MC>
QUIRE_AVX2 static inline void tile_i8(const int8_t* xq, const float* xd, const float* xsum,
                                      const uint8_t* qw, const uint16_t* sc, const uint16_t* mn,
                                      float* y, int64_t m0, int64_t N, int64_t K, int64_t n) {
  const int64_t G = K / 32;
  const __m256i low4 = _mm256_set1_epi8(0x0F);
  const __m256i ones = _mm256_set1_epi16(1);
  __m256 acc[MC];
  for (int m = 0; m < MC; ++m) acc[m] = _mm256_setzero_ps();
  for (int64_t g = 0; g < G; ++g) {
    __m256i w;
    if (BITS == 4) {
      const __m128i q =
          _mm_loadu_si128(reinterpret_cast<const __m128i*>(qw + n * (K / 2) + g * 16));
      w = _mm256_and_si256(_mm256_set_m128i(_mm_srli_epi16(q, 4), q), low4);
    } else {
      w = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(qw + n * K + g * 32));
    }
    const __m256i wabs = BITS == 4 ? w : _mm256_sign_epi8(w, w);
    const float dw = _cvtsh_ss(sc[n * G + g]);
    for (int m = 0; m < MC; ++m) {
      const int64_t row = m0 + m;
      __m256i xv = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(xq + row * K + g * 32));
      if (BITS != 4) xv = _mm256_sign_epi8(xv, w);
      const __m256i p = _mm256_madd_epi16(_mm256_maddubs_epi16(wabs, xv), ones);
      acc[m] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(p), _mm256_set1_ps(dw * xd[row * G + g]), acc[m]);
    }
  }
  for (int m = 0; m < MC; ++m)
    y[(m0 + m) * N + n] = hsum(acc[m]) + (mn ? min_term(mn, xsum, G, n, m0 + m) : 0.f);
}

template <int BITS>
QUIRE_AVX2 static void gemv_rows_i8(const int8_t* xq, const float* xd, const float* xsum,
                                    const uint8_t* qw, const uint16_t* sc, const uint16_t* mn,
                                    float* y, int64_t M, int64_t N, int64_t K, int64_t n0,
                                    int64_t n1) {
  for (int64_t n = n0; n < n1; ++n) {
    int64_t m0 = 0;
    for (; m0 + 4 <= M; m0 += 4) tile_i8<BITS, 4>(xq, xd, xsum, qw, sc, mn, y, m0, N, K, n);
    for (; m0 + 2 <= M; m0 += 2) tile_i8<BITS, 2>(xq, xd, xsum, qw, sc, mn, y, m0, N, K, n);
    for (; m0 < M; ++m0) tile_i8<BITS, 1>(xq, xd, xsum, qw, sc, mn, y, m0, N, K, n);
  }
}
#endif

// The best path this CPU runs: 2 AVX-512, 1 AVX2, 0 portable.
static int best_path() {
#if defined(__x86_64__) && defined(__GNUC__)
  __builtin_cpu_init();
  const bool avx2 = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") &&
                    __builtin_cpu_supports("f16c");
  const bool avx512 = avx2 && __builtin_cpu_supports("avx512f") &&
                      __builtin_cpu_supports("avx512bw") && __builtin_cpu_supports("avx512vl");
  return avx512 ? 2 : avx2 ? 1 : 0;
#else
  return 0;
#endif
}

// x [M, K] -> int8 per group of 32 (round to nearest, scale max|x| / 127) and the scales.
static void quantize_rows(const float* x, int8_t* xq, float* xd, int64_t M, int64_t K) {
  const int64_t G = K / 32;
  for (int64_t i = 0; i < M * G; ++i) {
    const float* v = x + i * 32;
    float amax = 0.f;
    for (int j = 0; j < 32; ++j) amax = std::max(amax, std::fabs(v[j]));
    const float d = amax / 127.f, inv = d > 0.f ? 1.f / d : 0.f;
    xd[i] = d;
    for (int j = 0; j < 32; ++j) xq[i * 32 + j] = static_cast<int8_t>(std::nearbyint(v[j] * inv));
  }
}

template <int BITS, int GS, typename S>
static void gemv(int path, const float* x, const float* xsum, const uint8_t* qw, const S* sc,
                 const S* mn, float* y, int64_t M, int64_t N, int64_t K, int64_t n0,
                 int64_t n1) {
#if defined(__x86_64__) && defined(__GNUC__)
  if (path == 2) return gemv_rows_f32_512<BITS, GS, S>(x, xsum, qw, sc, mn, y, M, N, K, n0, n1);
  if (path == 1) return gemv_rows_f32<BITS, GS, S>(x, xsum, qw, sc, mn, y, M, N, K, n0, n1);
#endif
  gemv_rows_portable<BITS, GS, S>(x, xsum, qw, sc, mn, y, M, N, K, n0, n1);
}

// Rows [n0, n1) of the dequantized [N, K] float matrix.
template <int BITS, int GS, typename S>
static void dequant_rows(const uint8_t* qw, const S* sc, const S* mn, float* out, int64_t K,
                         int64_t n0, int64_t n1) {
  const int64_t G = K / GS;
  float w[32];
  for (int64_t n = n0; n < n1; ++n)
    for (int64_t g = 0; g < G; ++g) {
      unpack_group<BITS, GS>(qw, K, n, g, w);
      const float s = sval(sc[n * G + g]), b = mn ? sval(mn[n * G + g]) : 0.f;
      for (int j = 0; j < GS; ++j) out[n * K + g * GS + j] = s * w[j] + b;
    }
}

template <typename S>
static const S* ptr(const torch::Tensor& t) {
  return t.defined() && t.numel() ? reinterpret_cast<const S*>(t.data_ptr()) : nullptr;
}

// Calls f with the (BITS, GS, S) instantiation the tensors ask for.
template <typename F>
static void dispatch(int64_t bits, int64_t group, const torch::Tensor& scales, F&& f) {
  const bool half = scales.scalar_type() == torch::kHalf;
  TORCH_CHECK(half || scales.scalar_type() == torch::kFloat, "scales must be float16 or float32");
  TORCH_CHECK((bits == 4 && group == 32) || (bits == 8 && (group == 32 || group == 16)),
              "unsupported packed layout: ", bits, " bits, groups of ", group);
  using B4 = std::integral_constant<int, 4>;
  using B8 = std::integral_constant<int, 8>;
  using G32 = std::integral_constant<int, 32>;
  using G16 = std::integral_constant<int, 16>;
  if (bits == 4 && half) return f(B4(), G32(), uint16_t());
  if (bits == 4) return f(B4(), G32(), float());
  if (group == 32 && half) return f(B8(), G32(), uint16_t());
  if (group == 32) return f(B8(), G32(), float());
  if (half) return f(B8(), G16(), uint16_t());
  return f(B8(), G16(), float());
}

// x [M, K] float32 contiguous; qweight; scales [N, K/group] and mins (or an empty tensor),
// float16 or float32 -> y [M, N] float32. path: the most this call may use (2 AVX-512,
// 1 AVX2, 0 portable; tests pin lower ones), capped by what the CPU has; int8_act: 8-bit
// activations (AVX2, groups of 32 with float16 scales; faster, not exact).
torch::Tensor quant_gemv(torch::Tensor x, torch::Tensor qweight, torch::Tensor scales,
                         torch::Tensor mins, int64_t bits, int64_t group, int64_t max_path,
                         bool int8_act) {
  const int64_t M = x.size(0), K = x.size(1), N = scales.size(0), G = K / group;
  auto y = torch::empty({M, N}, x.options());
  auto xsum = x.view({M, G, group}).sum(2).contiguous();
  const float* xp = x.data_ptr<float>();
  const float* sp = xsum.data_ptr<float>();
  float* yp = y.data_ptr<float>();
  const uint8_t* qp = reinterpret_cast<const uint8_t*>(qweight.data_ptr());
  static const int best = best_path();
  const int path = static_cast<int>(std::min<int64_t>(best, max_path));
  const bool avx2 = path >= 1;
#if defined(__x86_64__) && defined(__GNUC__)
  if (avx2 && int8_act && group == 32 && scales.scalar_type() == torch::kHalf) {
    std::vector<int8_t> xq(M * K);
    std::vector<float> xd(M * G);
    quantize_rows(xp, xq.data(), xd.data(), M, K);
    const uint16_t* sc = ptr<uint16_t>(scales);
    const uint16_t* mn = ptr<uint16_t>(mins);
    at::parallel_for(0, N, 16, [&](int64_t n0, int64_t n1) {
      if (bits == 4) gemv_rows_i8<4>(xq.data(), xd.data(), sp, qp, sc, mn, yp, M, N, K, n0, n1);
      else gemv_rows_i8<8>(xq.data(), xd.data(), sp, qp, sc, mn, yp, M, N, K, n0, n1);
    });
    return y;
  }
#endif
  dispatch(bits, group, scales, [&](auto b, auto gs, auto s) {
    using S = decltype(s);
    const S* sc = ptr<S>(scales);
    const S* mn = ptr<S>(mins);
    at::parallel_for(0, N, 16, [&](int64_t n0, int64_t n1) {
      gemv<decltype(b)::value, decltype(gs)::value, S>(path, xp, sp, qp, sc, mn, yp, M, N, K,
                                                        n0, n1);
    });
  });
  return y;
}

torch::Tensor quant_dequantize(torch::Tensor qweight, torch::Tensor scales, torch::Tensor mins,
                               int64_t bits, int64_t group, int64_t K) {
  const int64_t N = scales.size(0);
  auto out = torch::empty({N, K}, torch::dtype(torch::kFloat32));
  const uint8_t* q = reinterpret_cast<const uint8_t*>(qweight.data_ptr());
  float* o = out.data_ptr<float>();
  dispatch(bits, group, scales, [&](auto b, auto gs, auto s) {
    using S = decltype(s);
    const S* sc = ptr<S>(scales);
    const S* mn = ptr<S>(mins);
    at::parallel_for(0, N, 16, [&](int64_t n0, int64_t n1) {
      dequant_rows<decltype(b)::value, decltype(gs)::value, S>(q, sc, mn, o, K, n0, n1);
    });
  });
  return out;
}

// The path quant_gemv takes on this CPU: "avx512", "avx2" (AVX2 + FMA + F16C) or
// "portable" (plain C++, any CPU).
std::string quant_isa() {
  const int p = best_path();
  return p == 2 ? "avx512" : p == 1 ? "avx2" : "portable";
}
"""
