"""C++ source of decode attention's plain job (built by native.py between decode_vec_csrc.py
and decode_csrc.py, whose decode_rows calls it for every cache the bf16 tiles-of-16 job does
not take: float32 and float16 caches, 8-bit caches, other head sizes, CPUs without AVX-512
BF16). Dimensions as in csrc.py.
"""

DECODE_PLAIN = r"""
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
  auto vec = [&](auto nc) { block_scores_v<decltype(nc)::value>(q, rows, n, stride, s); };
  if (with_head_size<32, 64, 128, 256>(D, vec)) return;
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
  auto vec = [&](auto nc) { block_pv_v<decltype(nc)::value>(s, rows, n, stride, acc); };
  if (with_head_size<32, 64, 128, 256>(D, vec)) return;
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

// One softmax update of a (row, head)'s running max m, sum l and accumulator acc with the
// scores sh[lo, hi) of a block (turned into weights in place).
static inline void softmax_update(float* sh, int64_t lo, int64_t hi, float soft_cap, float& m,
                                  float& l, float* acc, int64_t D) {
  if (soft_cap > 0.f)
    for (int64_t t = lo; t < hi; ++t) sh[t] = soft_cap * std::tanh(sh[t] / soft_cap);
  float bmax = -INFINITY;
  for (int64_t t = lo; t < hi; ++t) bmax = std::max(bmax, sh[t]);
  const float new_m = std::max(m, bmax);
  const float correction = fast_exp(m - new_m);
  float sum = 0.f;
  for (int64_t t = lo; t < hi; ++t) {
    sh[t] = fast_exp(sh[t] - new_m);
    sum += sh[t];
  }
  l = l * correction + sum;
  m = new_m;
  for (int64_t d = 0; d < D; ++d) acc[d] *= correction;
}

// One job: NR consecutive rows of one sequence (row i's context L0 + i: a request's
// speculative verification rows, or one decode row), query heads of KV heads [k0, k1),
// blocks [b_lo, b_hi) of the rows' table (one context chunk); it leaves each (row, head)'s
// running max m, sum l and unnormalised accumulator acc for merge_chunks(). Per
// block, all those heads' keys of a token are contiguous in the [N, S, Hkv, RS] cache, so
// the job streams memory in order, once for all its rows: scores for the block's tokens,
// a softmax update per (row, head), then the weighted values. A row's block ranges are the
// same whatever NR is, so its result is too. Plain caches (CT = T, RS = D) widen each
// block's K and V rows to float once; 8-bit caches (QUANT: each (token, head) row is D
// values of CT, int8 or fp8 e4m3, then its float32 scale, RS = D + 4 bytes) read them in
// place, the scale multiplying the row's dot product (keys) or its weight (values).
template <typename T, typename CT, bool QUANT>
static void decode_job(const T* q, int64_t NR, const CT* kc, const CT* vc, const int32_t* bt,
                       int64_t L0, int64_t Hq, int64_t Hkv, int64_t D, int64_t RS,
                       int64_t S, int64_t k0, int64_t k1, int64_t b_lo, int64_t b_hi,
                       float scale, int64_t window, float soft_cap, float* qf, float* acc,
                       float* m, float* l, float* s, float* kvf) {
  const int64_t G = Hq / Hkv, hk = k1 - k0, hc = hk * G, h0 = k0 * G;
  for (int64_t i = 0; i < NR; ++i)
    for (int64_t j = 0; j < hc * D; ++j)
      qf[i * hc * D + j] = static_cast<float>(q[i * Hq * D + h0 * D + j]) * scale;
  std::fill(acc, acc + NR * hc * D, 0.f);
  std::fill(m, m + NR * hc, -INFINITY);
  std::fill(l, l + NR * hc, 0.f);
  const int64_t Lmax = L0 + NR - 1;
  auto first = [&](int64_t i) {
    return window > 0 ? std::max<int64_t>(0, L0 + i - window) : int64_t{0};
  };
  for (int64_t b = std::max(b_lo, first(0) / S); b < b_hi && b * S < Lmax; ++b) {
    const int64_t blk = bt[b], tb = b * S, n = std::min(S, Lmax - tb);
    const CT* kb = kc + blk * S * Hkv * RS;
    const CT* vb = vc + blk * S * Hkv * RS;
    // Row i reads the block's tokens [lo, hi) (offsets from the block's start).
    auto range = [&](int64_t i, int64_t& lo, int64_t& hi) {
      lo = std::max(tb, first(i)) - tb;
      hi = std::min(tb + S, L0 + i) - tb;
    };
    // f(h, ih, lo, hi) for every (row i, head h) reading tokens [lo, hi) of the block.
    auto each_head = [&](auto&& f) {
      for (int64_t i = 0; i < NR; ++i) {
        int64_t lo, hi;
        range(i, lo, hi);
        if (hi <= lo) continue;
        for (int64_t h = 0; h < hc; ++h) f(h, i * hc + h, lo, hi);
      }
    };
    if constexpr (!QUANT) widen_rows(kb + k0 * D, kvf, n, Hkv, hk, D);
    each_head([&](int64_t h, int64_t ih, int64_t lo, int64_t hi) {
      float* sh = s + ih * S;
      if constexpr (!QUANT) {
        block_scores(qf + ih * D, kvf + lo * hk * D + (h / G) * D, hi - lo, hk * D, D,
                     sh + lo);
      } else {
        for (int64_t t = lo; t < hi; ++t) {
          const CT* kp = kb + (t * Hkv + k0 + h / G) * RS;
          const float* qp = qf + ih * D;
          float dot = 0.f;
          for (int64_t d = 0; d < D; ++d) dot += qp[d] * static_cast<float>(kp[d]);
          sh[t] = dot * row_scale<CT, QUANT>(kp, D);
        }
      }
      softmax_update(sh, lo, hi, soft_cap, m[ih], l[ih], acc + ih * D, D);
    });
    if constexpr (!QUANT) widen_rows(vb + k0 * D, kvf, n, Hkv, hk, D);
    each_head([&](int64_t h, int64_t ih, int64_t lo, int64_t hi) {
      const float* sh = s + ih * S;
      float* ap = acc + ih * D;
      if constexpr (!QUANT) {
        block_pv(sh + lo, kvf + lo * hk * D + (h / G) * D, hi - lo, hk * D, D, ap);
      } else {
        for (int64_t t = lo; t < hi; ++t) {
          const CT* vp = vb + (t * Hkv + k0 + h / G) * RS;
          const float p = sh[t] * row_scale<CT, QUANT>(vp, D);
          for (int64_t d = 0; d < D; ++d) ap[d] += p * static_cast<float>(vp[d]);
        }
      }
    });
  }
}
"""
