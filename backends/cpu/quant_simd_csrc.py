"""x86 SIMD tiles of the cpu backend's packed-weight matmul (see quant_csrc.py for the
layout and how the pieces are put together): float activations with AVX2 + FMA + F16C
(8-float vectors) and AVX-512 (16-float vectors), and the optional 8-bit-activation tile
(AVX2). Each function carries a target attribute, so one build serves every x86-64 CPU;
quant_csrc.ENTRY picks the path at run time."""

SIMD = r"""
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
"""
