"""C++ source of the cpu backend's decode attention (paged_decode; built by native.py after
csrc.py's COMMON). Dimensions as in csrc.py: R rows, Hq query heads, Hkv KV heads,
G = Hq / Hkv, D head size, N blocks, S block size, B max blocks per row, L a row's context.
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

// f(std::integral_constant<int, D / 16>) for the head sizes the vector forms take; false
// (nothing called) for the others.
template <typename F>
static inline bool with_vectors(int64_t D, F&& f) {
  switch (D) {
    case 32: f(std::integral_constant<int, 2>{}); return true;
    case 64: f(std::integral_constant<int, 4>{}); return true;
    case 128: f(std::integral_constant<int, 8>{}); return true;
    case 256: f(std::integral_constant<int, 16>{}); return true;
    default: return false;
  }
}
#endif

static inline void block_scores(const float* q, const float* rows, int64_t n, int64_t stride,
                                int64_t D, float* s) {
#ifdef __AVX512F__
  auto vec = [&](auto nc) { block_scores_v<decltype(nc)::value>(q, rows, n, stride, s); };
  if (with_vectors(D, vec)) return;
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
  if (with_vectors(D, vec)) return;
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

// Context chunks: every row's blocks are cut at multiples of CHUNK_TOKENS / S (a fixed
// grid, so a row's chunks, and its result, do not depend on the other rows of the call);
// each chunk is its own job, and the chunks' (m, l, acc) are merged in order. One decode row
// thus spreads over the threads by its context, not only its KV heads (3 KV heads on 2
// threads left one idle a third of the time).
constexpr int64_t CHUNK_TOKENS = 128;

// out[i, h] = (sum_c acc_c e^(m_c - M)) / (sum_c l_c e^(m_c - M)), M = max_c m_c, chunks in
// order (one chunk: e^0 = 1 exactly, so acc / l as before). part: nc slots of
// [NR * hc * D acc, NR * hc m, NR * hc l], slot stride SS.
template <typename T>
static void merge_chunks(const float* part, int64_t nc, int64_t SS, int64_t NR, int64_t hc,
                         int64_t D, T* out, int64_t Hq, int64_t h0, float* a) {
  for (int64_t i = 0; i < NR; ++i)
    for (int64_t h = 0; h < hc; ++h) {
      const int64_t ih = i * hc + h;
      float M = -INFINITY;
      for (int64_t c = 0; c < nc; ++c) M = std::max(M, part[c * SS + NR * hc * D + ih]);
      float L = 0.f;
      std::fill(a, a + D, 0.f);
      for (int64_t c = 0; c < nc; ++c) {
        const float* slot = part + c * SS;
        const float mc = slot[NR * hc * D + ih];
        if (mc == -INFINITY) continue;  // no token of this row in the chunk
        const float w = fast_exp(mc - M);
        L += slot[NR * hc * D + NR * hc + ih] * w;
        for (int64_t d = 0; d < D; ++d) a[d] += slot[ih * D + d] * w;
      }
      for (int64_t d = 0; d < D; ++d)
        out[i * Hq * D + (h0 + h) * D + d] = static_cast<T>(a[d] / L);
    }
}

template <typename T, typename CT, bool QUANT>
static void decode_rows(const T* q, const CT* kc, const CT* vc, const int32_t* bt,
                        const int32_t* lens, T* out, int64_t R, int64_t Hq, int64_t Hkv,
                        int64_t D, int64_t RS, int64_t S, int64_t B, float scale,
                        int64_t window, float soft_cap) {
  // Runs of rows of one sequence (the same block table, contexts one longer each: a
  // request's verification rows) share their K/V reads. Jobs: a run's context chunks, each
  // further split in KV heads, then in rows, while there are fewer than ~2 jobs per thread.
  const int64_t CB = std::max<int64_t>(1, CHUNK_TOKENS / S);  // blocks per context chunk
  // Rows [r, r + nr) of a run read blocks [b0, b1): context chunks [c0, c0 + nc).
  auto chunk_range = [&](int64_t r, int64_t nr, int64_t& c0, int64_t& nc, int64_t& b1) {
    const int64_t b0 = (window > 0 ? std::max<int64_t>(0, lens[r] - window) : 0) / S;
    b1 = std::max<int64_t>(b0 + 1, (lens[r] + nr - 1 + S - 1) / S);
    c0 = b0 / CB;
    nc = (b1 + CB - 1) / CB - c0;
  };
  std::vector<std::pair<int64_t, int64_t>> runs;  // (first row, rows)
  int64_t base = 0;  // context chunks over all runs
  for (int64_t r = 0; r < R;) {
    int64_t e = r + 1;
    while (e < R && lens[e] == lens[e - 1] + 1 &&
           std::memcmp(bt + e * B, bt + r * B, B * sizeof(int32_t)) == 0)
      ++e;
    runs.emplace_back(r, e - r);
    int64_t c0, nc, b1;
    chunk_range(r, e - r, c0, nc, b1);
    base += nc;
    r = e;
  }
  const int64_t threads = at::get_num_threads(), want = 2 * threads;
  const int64_t chunks = std::min<int64_t>(Hkv, std::max<int64_t>(1, (want + base - 1) / base));
  const int64_t pieces = std::max<int64_t>(1, (want + base * chunks - 1) / (base * chunks));
  std::vector<std::pair<int64_t, int64_t>> segs;
  int64_t max_rows = 1;
  for (const auto& [r0, n] : runs) {
    const int64_t per = (n + pieces - 1) / pieces;
    for (int64_t r = r0; r < r0 + n; r += per) {
      segs.emplace_back(r, std::min(per, r0 + n - r));
      max_rows = std::max(max_rows, segs.back().second);
    }
  }
  const int64_t per_chunk = (Hkv + chunks - 1) / chunks;
  const int64_t G = Hq / Hkv, nsegs = static_cast<int64_t>(segs.size());
  const int64_t SS = max_rows * per_chunk * G * (D + 2);  // floats per partial slot
  // Per (seg, KV-head chunk): its context chunks' slots from first_slot[]; a seg of one
  // context chunk writes its rows' outputs itself (no slot, no merge).
  std::vector<int64_t> c_first(nsegs), c_count(nsegs), first_slot(nsegs * chunks, -1);
  struct Job { int64_t g, c, i, cost; };
  std::vector<Job> jobs;
  int64_t slots = 0;
  for (int64_t g = 0; g < nsegs; ++g) {
    const auto [r, nr] = segs[g];
    int64_t b1;
    chunk_range(r, nr, c_first[g], c_count[g], b1);
    for (int64_t c = 0; c < chunks; ++c) {
      if (c_count[g] > 1) {
        first_slot[g * chunks + c] = slots;
        slots += c_count[g];
      }
      const int64_t heads =
          std::max<int64_t>(0, std::min(Hkv, (c + 1) * per_chunk) - c * per_chunk);
      for (int64_t i = 0; i < c_count[g]; ++i)
        jobs.push_back({g, c, i, nr * heads * (std::min(b1, (c_first[g] + i + 1) * CB) -
                                               (c_first[g] + i) * CB)});
    }
  }
  // Largest first, handed out one at a time: chunks differ in length (a context's last).
  std::stable_sort(jobs.begin(), jobs.end(),
                   [](const Job& x, const Job& y) { return x.cost > y.cost; });
  std::vector<float> part(slots * SS);
  // Context chunks of each (seg, KV-head chunk) still running: the job that finishes the
  // last one merges them (in order, so the result does not depend on which thread does).
  std::unique_ptr<std::atomic<int64_t>[]> left(new std::atomic<int64_t>[nsegs * chunks]);
  for (int64_t g = 0; g < nsegs; ++g)
    for (int64_t c = 0; c < chunks; ++c) left[g * chunks + c].store(c_count[g]);
  // bf16 caches with a head size attn16 takes run its tiles-of-16 job (decode_vec_csrc.py).
  bool vec = false;
#ifdef __AVX512BF16__
  if constexpr (std::is_same_v<T, c10::BFloat16> && std::is_same_v<CT, c10::BFloat16>)
    vec = attn16::with_head_size(D, [](auto) {});
#endif
  const int64_t njobs = static_cast<int64_t>(jobs.size());
  std::atomic<int64_t> next{0};
  at::parallel_for(0, std::min(threads, njobs), 1, [&](int64_t, int64_t) {
    const int64_t hc = per_chunk * G, nh = max_rows * hc;
    std::vector<float> qf(vec ? 0 : nh * D), s(nh * (vec ? 16 : S)), own(nh * (D + 2)), a(D);
    std::vector<float> kvf(QUANT || vec ? 0 : S * per_chunk * D);  // a block's K or V, widened
    std::vector<uint32_t> kt(vec ? D * 16 : 0);  // a tile's keys, transposed
    for (int64_t job = next++; job < njobs; job = next++) {
      const auto [g, c, i, cost] = jobs[job];
      const auto [r, nr] = segs[g];
      const int64_t k0 = c * per_chunk, k1 = std::min(Hkv, k0 + per_chunk);
      if (k0 >= k1) continue;
      const int64_t b_lo = (c_first[g] + i) * CB, n = nr * (k1 - k0) * G;
      const int64_t fs = first_slot[g * chunks + c];
      float* slot = fs < 0 ? own.data() : part.data() + (fs + i) * SS;
      bool done = false;
#ifdef __AVX512BF16__
      if constexpr (std::is_same_v<T, c10::BFloat16> && std::is_same_v<CT, c10::BFloat16>) {
        if (vec)
          done = attn16::with_head_size(D, [&](auto nc) {
            attn16::job<decltype(nc)::value>(
                reinterpret_cast<const uint16_t*>(q + r * Hq * D), nr,
                reinterpret_cast<const uint16_t*>(kc), reinterpret_cast<const uint16_t*>(vc),
                bt + r * B, lens[r], Hq, Hkv, S, k0, k1, b_lo, b_lo + CB, scale, window,
                soft_cap, slot, slot + n * D, slot + n * D + n, kt.data(), s.data());
          });
      }
#endif
      if (!done)
        decode_job<T, CT, QUANT>(q + r * Hq * D, nr, kc, vc, bt + r * B, lens[r], Hq, Hkv, D,
                                 RS, S, k0, k1, b_lo, b_lo + CB, scale, window, soft_cap,
                                 qf.data(), slot, slot + n * D, slot + n * D + n, s.data(),
                                 kvf.data());
      if (fs < 0)
        merge_chunks(slot, 1, 0, nr, (k1 - k0) * G, D, out + r * Hq * D, Hq, k0 * G, a.data());
      else if (left[g * chunks + c].fetch_sub(1, std::memory_order_acq_rel) == 1)
        merge_chunks(part.data() + fs * SS, c_count[g], SS, nr, (k1 - k0) * G, D,
                     out + r * Hq * D, Hq, k0 * G, a.data());
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
