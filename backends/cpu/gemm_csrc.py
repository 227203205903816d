"""C++ source of the cpu backend's bf16 GEMM for linear layers and MoE experts (built with the
other kernels by native.py, before moe_csrc.MOE, which calls it; linear.VnniLinear calls
vnni_linear).

Why a GEMM of our own: an expert in a decode step sees a few to a few dozen rows, where
oneDNN's packed bf16 GEMM runs well below both the machine's streaming bandwidth and its
vdpbf16ps rate (dev box, up + down of a 512 x 1376 expert: 0.43 ms at 8 rows and 0.55 ms at
16 where streaming the weights takes 0.32; benchmarks/MODELS.md). This kernel runs every row
against one panel of 32 output columns (up to 12 rows a tile, 24 accumulators) while the
next panel is prefetched, a share per row tile, so streaming and arithmetic overlap.

Layout ("vnni"): W [N, K] becomes panels of 32 output columns, [N / 32][K / 2][32][2]: the
two bf16 of a k pair side by side, which vdpbf16ps multiplies and adds into one fp32 lane.
K is padded to even, N to whole panels, with zeros. The up projection of an expert (gate | up,
[2I, K]) is packed so that panel p holds gate columns 16p..16p+15 and the matching up columns,
and its epilogue writes silu(gate) * up directly (rounded as silu_mul rounds it).

Only where the build targets AVX-512 BF16 (-march=native on such a CPU); elsewhere
bf16_gemm_supported() is false and layers and experts stay oneDNN's.
"""

GEMM = r"""
bool bf16_gemm_supported() {
#ifdef __AVX512BF16__
  return true;
#else
  return false;
#endif
}

// W [N, K] (bf16) -> [panels, ceil(K / 2), 64] bf16. gated: W is gate | up ([2I, K]) and
// panel p holds gate rows 16p.. and up rows I + 16p.. (16 each); else rows 32p.. .
torch::Tensor vnni_pack(torch::Tensor w, bool gated) {
  TORCH_CHECK(w.dim() == 2 && w.scalar_type() == at::kBFloat16, "vnni_pack: bf16 [N, K]");
  w = w.contiguous();
  const int64_t N = w.size(0), K = w.size(1), kp = (K + 1) / 2;
  const int64_t half = gated ? N / 2 : 0;
  TORCH_CHECK(!gated || N % 2 == 0, "vnni_pack: gated weight needs an even row count");
  const int64_t panels = gated ? (half + 15) / 16 : (N + 31) / 32;
  auto out = torch::zeros({panels, kp, 64}, w.options());
  const uint16_t* src = reinterpret_cast<const uint16_t*>(w.data_ptr<at::BFloat16>());
  uint16_t* dst = reinterpret_cast<uint16_t*>(out.data_ptr<at::BFloat16>());
  for (int64_t p = 0; p < panels; ++p)
    for (int64_t c = 0; c < 32; ++c) {
      int64_t row;
      if (gated) {
        const int64_t col = 16 * p + (c % 16);
        row = col < half ? col + (c < 16 ? 0 : half) : -1;
      } else {
        row = 32 * p + c < N ? 32 * p + c : -1;
      }
      if (row < 0) continue;
      for (int64_t k = 0; k < K; ++k)
        dst[(p * kp + k / 2) * 64 + c * 2 + (k % 2)] = src[row * K + k];
    }
  return out;
}

#ifdef __AVX512BF16__
constexpr int MAX_ROWS = 12;  // rows per tile: 2 x 12 accumulators, 2 weight and 1 row register

// acc[r] (32 fp32 lanes as two zmm) = A[r, :] . panel, for MR rows of A (lda bf16 per row,
// K padded to 2 * kp with zeros).
template <int MR, bool PREFETCH>
static inline void panel_tile(const uint16_t* a, int64_t lda, const uint16_t* b, int64_t kp,
                              const uint16_t* pf, int64_t pf_count, __m512 (&acc)[MAX_ROWS][2]) {
#pragma GCC unroll 16
  for (int r = 0; r < MR; ++r) acc[r][0] = acc[r][1] = _mm512_setzero_ps();
  for (int64_t k = 0; k < kp; ++k) {
    const __m512bh b0 = (__m512bh)_mm512_loadu_si512(b + k * 64);
    const __m512bh b1 = (__m512bh)_mm512_loadu_si512(b + k * 64 + 32);
    if (PREFETCH && k < pf_count) {  // a slice of the next panel, while this one computes
      _mm_prefetch(reinterpret_cast<const char*>(pf + k * 64), _MM_HINT_T1);
      _mm_prefetch(reinterpret_cast<const char*>(pf + k * 64 + 32), _MM_HINT_T1);
    }
#pragma GCC unroll 16
    for (int r = 0; r < MR; ++r) {
      int32_t pair;
      std::memcpy(&pair, a + r * lda + 2 * k, sizeof(pair));
      const __m512bh av = (__m512bh)_mm512_set1_epi32(pair);
      acc[r][0] = _mm512_dpbf16_ps(acc[r][0], av, b0);
      acc[r][1] = _mm512_dpbf16_ps(acc[r][1], av, b1);
    }
  }
}

// out[r, 32p..] (plain) or out[r, 16p..] = silu(gate) * up (gated), for MR rows.
template <int MR>
static inline void store_tile(__m512 (&acc)[MAX_ROWS][2], uint16_t* out, int64_t ldo, int64_t p,
                              bool gated) {
  for (int r = 0; r < MR; ++r) {
    if (!gated) {
      const __m256bh lo = _mm512_cvtneps_pbh(acc[r][0]), hi = _mm512_cvtneps_pbh(acc[r][1]);
      _mm256_storeu_si256(reinterpret_cast<__m256i*>(out + r * ldo + 32 * p), (__m256i)lo);
      _mm256_storeu_si256(reinterpret_cast<__m256i*>(out + r * ldo + 32 * p + 16), (__m256i)hi);
      continue;
    }
    // silu_mul's rounding: gate, up and act each to bf16; exp as fast_exp, 16 lanes.
    const __m512 g = round_bf16(acc[r][0]), u = round_bf16(acc[r][1]);
    const __m512 neg = _mm512_sub_ps(_mm512_setzero_ps(), g);
    const __m512 act =
        round_bf16(_mm512_div_ps(g, _mm512_add_ps(_mm512_set1_ps(1.f), exp16(neg))));
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(out + r * ldo + 16 * p),
                        (__m256i)_mm512_cvtneps_pbh(_mm512_mul_ps(act, u)));
  }
}

template <int MR>
static void rows_panel(const uint16_t* a, int64_t lda, const uint16_t* b, int64_t kp,
                       uint16_t* out, int64_t ldo, int64_t p, bool gated, const uint16_t* pf,
                       int64_t pf_count) {
  __m512 acc[MAX_ROWS][2];
  if (pf_count > 0)
    panel_tile<MR, true>(a, lda, b, kp, pf, pf_count, acc);
  else
    panel_tile<MR, false>(a, lda, b, kp, pf, 0, acc);
  store_tile<MR>(acc, out, ldo, p, gated);
}
#endif

// out [M, ldo] = A [M, lda] x packed^T, A's K padded with zeros to 2 * kp columns; ldo is
// 32 * panels (plain) or 16 * panels (gated, silu(gate) * up). Panels split over threads.
static void vnni_gemm(const uint16_t* a, int64_t M, int64_t lda, const uint16_t* packed,
                      int64_t panels, int64_t kp, uint16_t* out, int64_t ldo, bool gated) {
#ifdef __AVX512BF16__
  // Each row group prefetches its share of the next panel (not past this thread's).
  const int64_t groups = (M + MAX_ROWS - 1) / MAX_ROWS, share = (kp + groups - 1) / groups;
  at::parallel_for(0, panels, 1, [&](int64_t p0, int64_t p1) {
    for (int64_t p = p0; p < p1; ++p) {
      const uint16_t* b = packed + p * kp * 64;
      for (int64_t m = 0; m < M; m += MAX_ROWS) {
        const uint16_t* ar = a + m * lda;
        uint16_t* o = out + m * ldo;
        const int64_t first = std::min(kp, (m / MAX_ROWS) * share);
        const int64_t pf_count = p + 1 < p1 ? std::min(share, kp - first) : 0;
        const uint16_t* pf = b + (kp + first) * 64;
        switch (std::min<int64_t>(MAX_ROWS, M - m)) {
#define QUIRE_ROWS_CASE(R) \
  case R: rows_panel<R>(ar, lda, b, kp, o, ldo, p, gated, pf, pf_count); break;
          QUIRE_ROWS_CASE(12) QUIRE_ROWS_CASE(11) QUIRE_ROWS_CASE(10) QUIRE_ROWS_CASE(9)
          QUIRE_ROWS_CASE(8) QUIRE_ROWS_CASE(7) QUIRE_ROWS_CASE(6) QUIRE_ROWS_CASE(5)
          QUIRE_ROWS_CASE(4) QUIRE_ROWS_CASE(3) QUIRE_ROWS_CASE(2) default: QUIRE_ROWS_CASE(1)
#undef QUIRE_ROWS_CASE
        }
      }
    }
  });
#else
  TORCH_CHECK(false, "vnni_gemm: this build has no AVX-512 BF16");
#endif
}

// x [M, K] bf16 times a vnni_pack'ed weight -> [M, 32 * panels] (plain) or
// [M, 16 * panels] (gated: silu(gate) * up). VnniLinear's call; the MoE layer calls
// vnni_gemm.
torch::Tensor vnni_linear(torch::Tensor x, torch::Tensor packed, bool gated) {
  TORCH_CHECK(x.dim() == 2 && x.scalar_type() == at::kBFloat16 && packed.dim() == 3,
              "vnni_linear: bf16 x [M, K] and a packed weight");
  const int64_t M = x.size(0), panels = packed.size(0), kp = packed.size(1);
  TORCH_CHECK(x.size(1) <= 2 * kp, "vnni_linear: x has more columns than the weight");
  torch::Tensor a = x;
  if (!x.is_contiguous() || x.size(1) != 2 * kp) {  // pad K to the packed pairs
    a = torch::zeros({M, 2 * kp}, x.options());
    a.narrow(1, 0, x.size(1)).copy_(x);
  }
  const int64_t ldo = (gated ? 16 : 32) * panels;
  auto out = torch::empty({M, ldo}, x.options());
  vnni_gemm(reinterpret_cast<const uint16_t*>(a.data_ptr<at::BFloat16>()), M, 2 * kp,
            reinterpret_cast<const uint16_t*>(packed.data_ptr<at::BFloat16>()), panels, kp,
            reinterpret_cast<uint16_t*>(out.data_ptr<at::BFloat16>()), ldo, gated);
  return out;
}
"""
