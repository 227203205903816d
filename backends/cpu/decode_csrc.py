"""C++ source of the cpu backend's decode attention (paged_decode; built by native.py after
csrc.py's COMMON, decode_vec_csrc.py's bf16 job, which decode_rows runs for bf16 caches with
head sizes 32, 64, 96, 128 or 256 on AVX-512 BF16, and decode_plain_csrc.py's decode_job,
which serves the rest).
Dimensions as in csrc.py: R rows, Hq query heads, Hkv KV heads, G = Hq / Hkv, D head size,
N blocks, S block size, B max blocks per row, L a row's context.
"""

DECODE = r"""
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
    vec = attn16::for_head_size(D, [](auto) {});
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
          done = attn16::for_head_size(D, [&](auto nc) {
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
