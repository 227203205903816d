"""C++ source of decode attention's bf16 job on AVX-512 BF16 (built by native.py after
csrc.py's COMMON; decode_csrc.py's decode_rows calls it for bf16 caches with head sizes 32,
64, 96, 128 or 256).

Why: the plain job (decode_plain_csrc.py) takes one token at a time -- a dot product ending in a
horizontal sum, a scalar exp, the K and V rows widened to float32 into a buffer -- about 44
cycles of a thread per (token, query head) on the dev box (Zen 4), far from its
multiply-adds. Here a block's tokens go 16 at a time across the vector lanes:

- keys: the tile's 16 key rows of one KV head are transposed once (16 x 16 32-bit words,
  each word a bf16 pair (2p, 2p + 1) of the head dimension), so that a query head's 16
  scores are D / 2 vdpbf16ps with the query's pair p broadcast -- no horizontal sums, and
  the transpose is shared by the G query heads of the KV head and every verification row;
- softmax: the 16 scores in one vector (masked to the tokens each row may see), exp16;
- values: each token's V row is widened once and multiplied into the accumulators of up
  to QB (row, head) pairs held in registers.

Each (row, head)'s result depends only on its own tokens, in a fixed order (tiles at fixed
offsets of its blocks), so a row computed alone or among verification rows is the same
bits; tokens a row may not see carry weight 0 in the shared value loop (adding 0 x v
leaves the accumulator as it was). The query enters vdpbf16ps as bf16 (the model's dtype)
and the scale multiplies the score, where the plain job scaled the query first.
"""

DECODE_VEC = r"""
#ifdef __AVX512BF16__
namespace attn16 {

// r[i] lane j <- r[j] lane i (16 x 16 32-bit words).
static inline void transpose16(__m512i r[16]) {
  __m512i t[16];
  for (int i = 0; i < 8; ++i) {
    t[2 * i] = _mm512_unpacklo_epi32(r[2 * i], r[2 * i + 1]);
    t[2 * i + 1] = _mm512_unpackhi_epi32(r[2 * i], r[2 * i + 1]);
  }
  // u[4g + j] lane L: column 4L + j of rows 4g..4g+3
  for (int g = 0; g < 4; ++g) {
    r[4 * g] = _mm512_unpacklo_epi64(t[4 * g], t[4 * g + 2]);
    r[4 * g + 1] = _mm512_unpackhi_epi64(t[4 * g], t[4 * g + 2]);
    r[4 * g + 2] = _mm512_unpacklo_epi64(t[4 * g + 1], t[4 * g + 3]);
    r[4 * g + 3] = _mm512_unpackhi_epi64(t[4 * g + 1], t[4 * g + 3]);
  }
  // 4 x 4 transpose of 128-bit lanes: out[4L + j] lane g = u[4g + j] lane L
  for (int j = 0; j < 4; ++j) {
    const __m512i v0 = _mm512_shuffle_i32x4(r[j], r[4 + j], 0x44);
    const __m512i v1 = _mm512_shuffle_i32x4(r[j], r[4 + j], 0xEE);
    const __m512i v2 = _mm512_shuffle_i32x4(r[8 + j], r[12 + j], 0x44);
    const __m512i v3 = _mm512_shuffle_i32x4(r[8 + j], r[12 + j], 0xEE);
    t[j] = _mm512_shuffle_i32x4(v0, v2, 0x88);
    t[4 + j] = _mm512_shuffle_i32x4(v0, v2, 0xDD);
    t[8 + j] = _mm512_shuffle_i32x4(v1, v3, 0x88);
    t[12 + j] = _mm512_shuffle_i32x4(v1, v3, 0xDD);
  }
  for (int i = 0; i < 16; ++i) r[i] = t[i];
}

// nt (<= 16) key rows of D bf16 (row t at src + t * stride) -> kt[p * 16 + t] = the word of
// pair p of row t; lanes t >= nt zero.
template <int NC>
static inline void keys_t(const uint16_t* src, int64_t stride, int64_t nt, uint32_t* kt) {
  for (int c = 0; c < NC / 2; ++c) {  // 16 words (32 values) of every row at a time
    __m512i r[16];
    for (int t = 0; t < 16; ++t)
      r[t] = t < nt ? _mm512_loadu_si512(src + t * stride + 32 * c) : _mm512_setzero_si512();
    transpose16(r);
    for (int p = 0; p < 16; ++p) _mm512_storeu_si512(kt + (16 * c + p) * 16, r[p]);
  }
}

// A query row's 16 scores against transposed keys: D / 2 vdpbf16ps in four chains, summed
// in a fixed order.
template <int NC>
static inline __m512 scores(const uint16_t* q, const uint32_t* kt) {
  __m512 a0 = _mm512_setzero_ps(), a1 = a0, a2 = a0, a3 = a0;
  auto pair = [&](int p) {
    int32_t w;
    std::memcpy(&w, q + 2 * p, sizeof(w));
    return (__m512bh)_mm512_set1_epi32(w);
  };
  auto keys = [&](int p) { return (__m512bh)_mm512_loadu_si512(kt + p * 16); };
#pragma GCC unroll 16
  for (int p = 0; p < 8 * NC; p += 4) {
    a0 = _mm512_dpbf16_ps(a0, pair(p), keys(p));
    a1 = _mm512_dpbf16_ps(a1, pair(p + 1), keys(p + 1));
    a2 = _mm512_dpbf16_ps(a2, pair(p + 2), keys(p + 2));
    a3 = _mm512_dpbf16_ps(a3, pair(p + 3), keys(p + 3));
  }
  return _mm512_add_ps(_mm512_add_ps(a0, a1), _mm512_add_ps(a2, a3));
}

// (row, head) pairs whose accumulators a value loop holds in registers at once.
template <int NC>
constexpr int query_block() { return NC >= 8 ? 2 : 4; }

// acc[j] += sum over tokens t in [t_lo, t_hi) of p[j][t] * v_t for the NQ pairs j (a
// count fixed at compile time, so the accumulators stay in registers).
template <int NC, int NQ>
static inline void values(const uint16_t* vsrc, int64_t stride, int64_t t_lo, int64_t t_hi,
                          const float* const* p, float* const* acc) {
  __m512 a[NQ][NC];
  for (int j = 0; j < NQ; ++j)
    for (int c = 0; c < NC; ++c) a[j][c] = _mm512_loadu_ps(acc[j] + 16 * c);
  for (int64_t t = t_lo; t < t_hi; ++t) {
    __m512 v[NC];
    for (int c = 0; c < NC; ++c)
      v[c] = widen_bf16(_mm256_loadu_si256(
          reinterpret_cast<const __m256i*>(vsrc + t * stride + 16 * c)));
    for (int j = 0; j < NQ; ++j) {
      const __m512 w = _mm512_set1_ps(p[j][t]);
      for (int c = 0; c < NC; ++c) a[j][c] = _mm512_fmadd_ps(w, v[c], a[j][c]);
    }
  }
  for (int j = 0; j < NQ; ++j)
    for (int c = 0; c < NC; ++c) _mm512_storeu_ps(acc[j] + 16 * c, a[j][c]);
}

template <int NC>
static inline void values_n(const uint16_t* vsrc, int64_t stride, int64_t t_lo, int64_t t_hi,
                            const float* const* p, float* const* acc, int n) {
  switch (n) {
    case 1: values<NC, 1>(vsrc, stride, t_lo, t_hi, p, acc); break;
    case 2: values<NC, 2>(vsrc, stride, t_lo, t_hi, p, acc); break;
    case 3:
      if constexpr (query_block<NC>() >= 3) values<NC, 3>(vsrc, stride, t_lo, t_hi, p, acc);
      break;
    case 4:
      if constexpr (query_block<NC>() >= 4) values<NC, 4>(vsrc, stride, t_lo, t_hi, p, acc);
      break;
    default: break;
  }
}

// The job decode_plain_csrc.py's decode_job describes (same arguments and outputs: NR rows of one
// sequence, query heads of KV heads [k0, k1), blocks [b_lo, b_hi); each (row, head)'s
// running max m, sum l and unnormalised acc), for bf16 caches. Scratch: kt D * 16 words,
// pw NR * hc * 16 floats.
template <int NC>
static void job(const uint16_t* q, int64_t NR, const uint16_t* kc, const uint16_t* vc,
                const int32_t* bt, int64_t L0, int64_t Hq, int64_t Hkv, int64_t S, int64_t k0,
                int64_t k1, int64_t b_lo, int64_t b_hi, float scale, int64_t window,
                float soft_cap, float* acc, float* m, float* l, uint32_t* kt, float* pw) {
  constexpr int64_t D = 16 * NC;
  constexpr int QB = query_block<NC>();
  const int64_t G = Hq / Hkv, hc = (k1 - k0) * G, h0 = k0 * G, stride = Hkv * D;
  std::fill(acc, acc + NR * hc * D, 0.f);
  std::fill(m, m + NR * hc, -INFINITY);
  std::fill(l, l + NR * hc, 0.f);
  const int64_t Lmax = L0 + NR - 1;
  auto first = [&](int64_t i) {
    return window > 0 ? std::max<int64_t>(0, L0 + i - window) : int64_t{0};
  };
  const __m512i lane = _mm512_set_epi32(15, 14, 13, 12, 11, 10, 9, 8, 7, 6, 5, 4, 3, 2, 1, 0);
  // The K and V rows of block b's tokens for the job's KV heads, into the cache ahead of
  // use (blocks lie anywhere in the cache, where no hardware prefetcher follows).
  auto prefetch_block = [&](int64_t b) {
    if (b >= b_hi || b * S >= Lmax) return;
    const int64_t n = std::min(S, Lmax - b * S), bytes = (k1 - k0) * D * 2;
    for (int64_t t = 0; t < n; ++t) {
      const int64_t off = ((static_cast<int64_t>(bt[b]) * S + t) * Hkv + k0) * D;
      for (int64_t x = 0; x < bytes; x += 64) {
        _mm_prefetch(reinterpret_cast<const char*>(kc + off) + x, _MM_HINT_T0);
        _mm_prefetch(reinterpret_cast<const char*>(vc + off) + x, _MM_HINT_T0);
      }
    }
  };
  const int64_t b_first = std::max(b_lo, first(0) / S);
  prefetch_block(b_first);
  for (int64_t b = b_first; b < b_hi && b * S < Lmax; ++b) {
    prefetch_block(b + 1);
    const int64_t n = std::min(S, Lmax - b * S);
    for (int64_t t0 = 0; t0 < n; t0 += 16) {
      const int64_t base = b * S + t0, nt = std::min<int64_t>(16, n - t0);
      const int64_t row0 = (static_cast<int64_t>(bt[b]) * S + t0) * Hkv;  // token t0, head 0
      // Row i sees the tile's tokens [lo, hi) (offsets from the tile's start).
      auto range = [&](int64_t i, int64_t& lo, int64_t& hi) {
        lo = std::max(base, first(i)) - base;
        hi = std::min(base + nt, L0 + i) - base;
      };
      int64_t u_lo = nt, u_hi = 0;  // the tile's tokens some row sees
      for (int64_t i = 0; i < NR; ++i) {
        int64_t lo, hi;
        range(i, lo, hi);
        if (hi > lo) u_lo = std::min(u_lo, lo), u_hi = std::max(u_hi, hi);
      }
      if (u_hi <= u_lo) continue;
      for (int64_t kh = k0; kh < k1; ++kh) {
        const int64_t hq0 = (kh - k0) * G;  // the KV head's first query head in the job
        keys_t<NC>(kc + (row0 + kh) * D, stride, nt, kt);
        for (int64_t i = 0; i < NR; ++i) {
          int64_t lo, hi;
          range(i, lo, hi);
          if (hi <= lo) continue;
          const __mmask16 mask =
              _mm512_cmp_epi32_mask(lane, _mm512_set1_epi32(lo), _MM_CMPINT_NLT) &
              _mm512_cmp_epi32_mask(lane, _mm512_set1_epi32(hi), _MM_CMPINT_LT);
          for (int64_t g = 0; g < G; ++g) {
            const int64_t ih = i * hc + hq0 + g;
            __m512 s = _mm512_mul_ps(scores<NC>(q + (i * Hq + h0 + hq0 + g) * D, kt),
                                     _mm512_set1_ps(scale));
            if (soft_cap > 0.f) {
              alignas(64) float sv[16];
              _mm512_store_ps(sv, s);
              for (int64_t t = lo; t < hi; ++t) sv[t] = soft_cap * std::tanh(sv[t] / soft_cap);
              s = _mm512_load_ps(sv);
            }
            const float new_m = std::max(m[ih], _mm512_mask_reduce_max_ps(mask, s));
            const __m512 e =
                _mm512_maskz_mov_ps(mask, exp16(_mm512_sub_ps(s, _mm512_set1_ps(new_m))));
            _mm512_storeu_ps(pw + ih * 16, e);
            if (new_m > m[ih]) {  // else the correction is fast_exp(0) = 1 exactly: skipped
              const float corr = fast_exp(m[ih] - new_m);
              l[ih] *= corr;
              float* a = acc + ih * D;
              const __m512 cv = _mm512_set1_ps(corr);
              for (int c = 0; c < NC; ++c)
                _mm512_storeu_ps(a + 16 * c, _mm512_mul_ps(_mm512_loadu_ps(a + 16 * c), cv));
              m[ih] = new_m;
            }
            l[ih] += _mm512_reduce_add_ps(e);
          }
        }
        // values: the (row, head) pairs that see some token of the tile, QB at a time
        const float* pp[QB];
        float* ap[QB];
        int nq = 0;
        const uint16_t* vsrc = vc + (row0 + kh) * D;
        for (int64_t i = 0; i < NR; ++i) {
          int64_t lo, hi;
          range(i, lo, hi);
          if (hi <= lo) continue;
          for (int64_t g = 0; g < G; ++g) {
            const int64_t ih = i * hc + hq0 + g;
            pp[nq] = pw + ih * 16;
            ap[nq] = acc + ih * D;
            if (++nq == QB) {
              values_n<NC>(vsrc, stride, u_lo, u_hi, pp, ap, nq);
              nq = 0;
            }
          }
        }
        if (nq) values_n<NC>(vsrc, stride, u_lo, u_hi, pp, ap, nq);
      }
    }
  }
}

// The head sizes this job takes (f(std::integral_constant<int, D / 16>) for them).
template <typename F>
static inline bool for_head_size(int64_t D, F&& f) {
  return with_head_size<32, 64, 96, 128, 256>(D, f);
}

}  // namespace attn16
#endif
"""
