"""C++ source of the cpu backend's weight-only quantized matmul (built by quant_native.py).

Layout: quire.models.quant.PackedWeight — N output rows, K inputs, groups of 32 inputs,
w = scale * q + min per (row, group); 4-bit q as GGUF keeps it (byte j of a group: input j
low nibble, input j + 16 high nibble), 8-bit q as signed bytes; scales and mins float16.

The kernels are compiled once per ISA (gcc target_clones: AVX-512, AVX2+FMA, baseline) and
the loader picks the version the CPU reports at run time, so one build serves machines with
and without AVX-512.
"""

SOURCE = r"""
#include <torch/extension.h>
#include <ATen/Parallel.h>
#include <c10/util/Half.h>
#include <cstdint>
#include <cstdlib>
#include <string>
#include <vector>

#if defined(__x86_64__) && defined(__GNUC__)
#define QUIRE_CLONES __attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default")))
#else
#define QUIRE_CLONES
#endif

static inline float h2f(uint16_t h) { return static_cast<float>(c10::Half(h, c10::Half::from_bits())); }

// Rows [n0, n1) of y[M, N] = x[M, K] W^T. xsum[M, K/32]: each group's sum of x (the min
// term). One pass over the weights for all M rows: each group is unpacked once to floats.
// Rows [n0, n1) of y[M, N] = x[M, K] W^T, portable version. xsum[M, K/32]: each group's
// sum of x (the min term). Weights stream once for all M rows.
template <int BITS>
static void gemv_rows_portable(const float* x, const float* xsum, const uint8_t* qw,
                               const uint16_t* sc, const uint16_t* mn, float* y, int64_t M,
                               int64_t N, int64_t K, int64_t n0, int64_t n1) {
  const int64_t G = K / 32;
  float w[32];
  for (int64_t n = n0; n < n1; ++n) {
    for (int64_t m = 0; m < M; ++m) y[m * N + n] = 0.f;
    for (int64_t g = 0; g < G; ++g) {
      if (BITS == 4) {
        const uint8_t* q = qw + n * (K / 2) + g * 16;
        for (int j = 0; j < 16; ++j) {
          w[j] = static_cast<float>(q[j] & 15);
          w[j + 16] = static_cast<float>(q[j] >> 4);
        }
      } else {
        const int8_t* q = reinterpret_cast<const int8_t*>(qw) + n * K + g * 32;
        for (int j = 0; j < 32; ++j) w[j] = static_cast<float>(q[j]);
      }
      const float s = h2f(sc[n * G + g]), b = mn ? h2f(mn[n * G + g]) : 0.f;
      for (int64_t m = 0; m < M; ++m) {
        const float* xm = x + m * K + g * 32;
        float d = 0.f;
        for (int j = 0; j < 32; ++j) d += w[j] * xm[j];
        y[m * N + n] += s * d + b * xsum[m * G + g];
      }
    }
  }
}

#if defined(__x86_64__) && defined(__GNUC__)
#include <immintrin.h>
// AVX2 with 8-bit activations (llama.cpp's scheme): each row of x is quantized per group of
// 32 to int8 with its own scale (xq, xd), so a group's dot product is two integer
// instructions (maddubs: unsigned x signed bytes -> int16 pairs; madd -> int32) and one FMA
// with the two scales. 4-bit weights are unsigned (0..15); 8-bit ones signed, handled as
// |w| times x carrying w's sign. The min term uses the exact float group sums.
// MC rows at once (a compile-time count, so the accumulators live in registers).
template <int BITS, int MC>
__attribute__((target("avx2,fma,f16c")))
static inline void gemv_tile_avx2(const int8_t* xq, const float* xd, const float* xsum,
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
      const __m128i q = _mm_loadu_si128(reinterpret_cast<const __m128i*>(qw + n * (K / 2) + g * 16));
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
  for (int m = 0; m < MC; ++m) {
    const int64_t row = m0 + m;
    float minsum = 0.f;
    if (mn) {  // sum_g min_g * xsum_g, eight groups at a time
      __m256 v = _mm256_setzero_ps();
      int64_t g = 0;
      for (; g + 8 <= G; g += 8)
        v = _mm256_fmadd_ps(_mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(mn + n * G + g))),
                            _mm256_loadu_ps(xsum + row * G + g), v);
      for (; g < G; ++g) minsum += _cvtsh_ss(mn[n * G + g]) * xsum[row * G + g];
      acc[m] = _mm256_add_ps(acc[m], v);
    }
    const __m128 h = _mm_add_ps(_mm256_castps256_ps128(acc[m]), _mm256_extractf128_ps(acc[m], 1));
    const __m128 h2 = _mm_add_ps(h, _mm_movehl_ps(h, h));
    const __m128 h1 = _mm_add_ss(h2, _mm_shuffle_ps(h2, h2, 1));
    y[row * N + n] = _mm_cvtss_f32(h1) + minsum;
  }
}

// Float activations (exact up to float rounding): a group's weights become four 8-float
// vectors once, then four FMAs per row.
template <int BITS, int MC>
__attribute__((target("avx2,fma,f16c")))
static inline void gemv_tile_avx2f(const float* x, const float* xsum, const uint8_t* qw,
                                   const uint16_t* sc, const uint16_t* mn, float* y,
                                   int64_t m0, int64_t N, int64_t K, int64_t n) {
  const int64_t G = K / 32;
  const __m128i low4 = _mm_set1_epi8(0x0F);
  __m256 acc[MC];
  for (int m = 0; m < MC; ++m) acc[m] = _mm256_setzero_ps();
  for (int64_t g = 0; g < G; ++g) {
    __m256 w0, w1, w2, w3;
    if (BITS == 4) {
      const __m128i q = _mm_loadu_si128(reinterpret_cast<const __m128i*>(qw + n * (K / 2) + g * 16));
      const __m128i lo = _mm_and_si128(q, low4);
      const __m128i hi = _mm_and_si128(_mm_srli_epi16(q, 4), low4);
      w0 = _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(lo));
      w1 = _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(_mm_srli_si128(lo, 8)));
      w2 = _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(hi));
      w3 = _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(_mm_srli_si128(hi, 8)));
    } else {
      const uint8_t* p = qw + n * K + g * 32;
      const __m128i a = _mm_loadu_si128(reinterpret_cast<const __m128i*>(p));
      const __m128i b = _mm_loadu_si128(reinterpret_cast<const __m128i*>(p + 16));
      w0 = _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(a));
      w1 = _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_srli_si128(a, 8)));
      w2 = _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(b));
      w3 = _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_srli_si128(b, 8)));
    }
    const __m256 s = _mm256_set1_ps(_cvtsh_ss(sc[n * G + g]));
    for (int m = 0; m < MC; ++m) {
      const float* xm = x + (m0 + m) * K + g * 32;
      __m256 d = _mm256_mul_ps(w0, _mm256_loadu_ps(xm));
      d = _mm256_fmadd_ps(w1, _mm256_loadu_ps(xm + 8), d);
      d = _mm256_fmadd_ps(w2, _mm256_loadu_ps(xm + 16), d);
      d = _mm256_fmadd_ps(w3, _mm256_loadu_ps(xm + 24), d);
      acc[m] = _mm256_fmadd_ps(d, s, acc[m]);
    }
  }
  for (int m = 0; m < MC; ++m) {
    const int64_t row = m0 + m;
    float minsum = 0.f;
    if (mn) {
      __m256 v = _mm256_setzero_ps();
      int64_t g = 0;
      for (; g + 8 <= G; g += 8)
        v = _mm256_fmadd_ps(_mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(mn + n * G + g))),
                            _mm256_loadu_ps(xsum + row * G + g), v);
      for (; g < G; ++g) minsum += _cvtsh_ss(mn[n * G + g]) * xsum[row * G + g];
      acc[m] = _mm256_add_ps(acc[m], v);
    }
    const __m128 h = _mm_add_ps(_mm256_castps256_ps128(acc[m]), _mm256_extractf128_ps(acc[m], 1));
    const __m128 h2 = _mm_add_ps(h, _mm_movehl_ps(h, h));
    const __m128 h1 = _mm_add_ss(h2, _mm_shuffle_ps(h2, h2, 1));
    y[row * N + n] = _mm_cvtss_f32(h1) + minsum;
  }
}

template <int BITS>
__attribute__((target("avx2,fma,f16c")))
static void gemv_rows_avx2f(const float* x, const float* xsum, const uint8_t* qw,
                            const uint16_t* sc, const uint16_t* mn, float* y, int64_t M,
                            int64_t N, int64_t K, int64_t n0, int64_t n1) {
  for (int64_t n = n0; n < n1; ++n) {
    int64_t m0 = 0;
    for (; m0 + 4 <= M; m0 += 4) gemv_tile_avx2f<BITS, 4>(x, xsum, qw, sc, mn, y, m0, N, K, n);
    for (; m0 + 2 <= M; m0 += 2) gemv_tile_avx2f<BITS, 2>(x, xsum, qw, sc, mn, y, m0, N, K, n);
    for (; m0 < M; ++m0) gemv_tile_avx2f<BITS, 1>(x, xsum, qw, sc, mn, y, m0, N, K, n);
  }
}

template <int BITS>
__attribute__((target("avx2,fma,f16c")))
static void gemv_rows_avx2(const int8_t* xq, const float* xd, const float* xsum,
                           const uint8_t* qw, const uint16_t* sc, const uint16_t* mn,
                           float* y, int64_t M, int64_t N, int64_t K, int64_t n0, int64_t n1) {
  for (int64_t n = n0; n < n1; ++n) {
    int64_t m0 = 0;
    for (; m0 + 4 <= M; m0 += 4) gemv_tile_avx2<BITS, 4>(xq, xd, xsum, qw, sc, mn, y, m0, N, K, n);
    for (; m0 + 2 <= M; m0 += 2) gemv_tile_avx2<BITS, 2>(xq, xd, xsum, qw, sc, mn, y, m0, N, K, n);
    for (; m0 < M; ++m0) gemv_tile_avx2<BITS, 1>(xq, xd, xsum, qw, sc, mn, y, m0, N, K, n);
  }
}
#endif

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

static bool has_avx2() {
#if defined(__x86_64__) && defined(__GNUC__)
  __builtin_cpu_init();
  return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") &&
         __builtin_cpu_supports("f16c");
#else
  return false;
#endif
}

static void gemv_q(int64_t bits, bool avx2, const float* x, const int8_t* xq, const float* xd,
                   const float* xsum, const uint8_t* qw, const uint16_t* sc, const uint16_t* mn,
                   float* y, int64_t M, int64_t N, int64_t K, int64_t n0, int64_t n1) {
#if defined(__x86_64__) && defined(__GNUC__)
  if (avx2 && xq != nullptr) {
    if (bits == 4) return gemv_rows_avx2<4>(xq, xd, xsum, qw, sc, mn, y, M, N, K, n0, n1);
    return gemv_rows_avx2<8>(xq, xd, xsum, qw, sc, mn, y, M, N, K, n0, n1);
  }
  if (avx2) {
    if (bits == 4) return gemv_rows_avx2f<4>(x, xsum, qw, sc, mn, y, M, N, K, n0, n1);
    return gemv_rows_avx2f<8>(x, xsum, qw, sc, mn, y, M, N, K, n0, n1);
  }
#endif
  if (bits == 4) return gemv_rows_portable<4>(x, xsum, qw, sc, mn, y, M, N, K, n0, n1);
  gemv_rows_portable<8>(x, xsum, qw, sc, mn, y, M, N, K, n0, n1);
}

// Rows [n0, n1) of the dequantized [N, K] float matrix.
QUIRE_CLONES
static void dequant_rows(const uint8_t* qw, int64_t bits, const uint16_t* sc, const uint16_t* mn,
                         float* out, int64_t K, int64_t n0, int64_t n1) {
  const int64_t G = K / 32;
  for (int64_t n = n0; n < n1; ++n) {
    for (int64_t g = 0; g < G; ++g) {
      const float s = h2f(sc[n * G + g]), b = mn ? h2f(mn[n * G + g]) : 0.f;
      float* o = out + n * K + g * 32;
      if (bits == 4) {
        const uint8_t* q = qw + n * (K / 2) + g * 16;
        for (int j = 0; j < 16; ++j) {
          o[j] = s * static_cast<float>(q[j] & 15) + b;
          o[j + 16] = s * static_cast<float>(q[j] >> 4) + b;
        }
      } else {
        const int8_t* q = reinterpret_cast<const int8_t*>(qw) + n * K + g * 32;
        for (int j = 0; j < 32; ++j) o[j] = s * static_cast<float>(q[j]) + b;
      }
    }
  }
}

static const uint16_t* half_ptr(const torch::Tensor& t) {
  return t.defined() && t.numel() ? reinterpret_cast<const uint16_t*>(t.data_ptr<at::Half>())
                                  : nullptr;
}

// x [M, K] float32 contiguous; qweight, scales [N, K/32] and mins (or an empty tensor)
// float16 -> y [M, N] float32. portable: the plain C++ path even where AVX2 is there
// (tests); int8_act: 8-bit activations (faster, not exact).
torch::Tensor quant_gemv(torch::Tensor x, torch::Tensor qweight, torch::Tensor scales,
                         torch::Tensor mins, int64_t bits, bool portable, bool int8_act) {
  const int64_t M = x.size(0), K = x.size(1), N = scales.size(0), G = K / 32;
  auto y = torch::empty({M, N}, x.options());
  auto xsum = x.view({M, G, 32}).sum(2).contiguous();
  const float* xp = x.data_ptr<float>();
  const float* sp = xsum.data_ptr<float>();
  const uint16_t* sc = half_ptr(scales);
  const uint16_t* mn = half_ptr(mins);
  float* yp = y.data_ptr<float>();
  static const bool has = has_avx2();
  const bool avx2 = has && !portable;
  std::vector<int8_t> xq;
  std::vector<float> xd;
  if (avx2 && int8_act) {
    xq.resize(M * K);
    xd.resize(M * G);
    quantize_rows(xp, xq.data(), xd.data(), M, K);
  }
  const uint8_t* qp = reinterpret_cast<const uint8_t*>(qweight.data_ptr());
  at::parallel_for(0, N, 16, [&](int64_t n0, int64_t n1) {
    gemv_q(bits, avx2, xp, xq.empty() ? nullptr : xq.data(), xd.empty() ? nullptr : xd.data(),
           sp, qp, sc, mn, yp, M, N, K, n0, n1);
  });
  return y;
}

torch::Tensor quant_dequantize(torch::Tensor qweight, torch::Tensor scales, torch::Tensor mins,
                               int64_t bits, int64_t K) {
  const int64_t N = scales.size(0);
  auto out = torch::empty({N, K}, torch::dtype(torch::kFloat32));
  const uint8_t* q = reinterpret_cast<const uint8_t*>(qweight.data_ptr());
  const uint16_t* sc = half_ptr(scales);
  const uint16_t* mn = half_ptr(mins);
  float* o = out.data_ptr<float>();
  at::parallel_for(0, N, 16, [&](int64_t n0, int64_t n1) {
    dequant_rows(q, bits, sc, mn, o, K, n0, n1);
  });
  return out;
}

// The path quant_gemv takes on this CPU: "avx2" (AVX2 + FMA + F16C, also on AVX-512
// machines) or "portable" (plain C++, any CPU).
std::string quant_isa() { return has_avx2() ? "avx2" : "portable"; }
"""
