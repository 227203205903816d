"""C++ source of the cpu backend's packed-weight GEMM in the "lanes" layout (built with the
other native kernels by native.py; quant_lanes.py repacks weights for it and calls it).

Why another layout: the "rows" kernel (quant_csrc.py) walks one output at a time and ends
each with a horizontal sum per row, so every extra row of a call (a speculative step's draft
positions, a batch) costs nearly what the first did. Here 16 outputs lie across the vector
lanes, as in the bf16 GEMM (gemm_csrc.py): a tile of packed weights is unpacked once to bf16
and multiplied into every row with vdpbf16ps, so extra rows cost only their multiply-adds.

Layout, for a weight [N, K] (N padded to tiles of 16 outputs, T tiles; G = K / group):
- 4-bit: [T][K / 8][32] uint16. Word l (l = 2 * o + p: output o of the tile, k parity p)
  holds four 4-bit values in bits 0-3, 4-7, 8-11, 12-15: those of k = 8b + 2v + p for
  v = 0..3. One 64-byte load gives four vdpbf16ps operands; a value becomes its bf16 by a
  32-entry table lookup (vpermw reads the low 5 bits of a word; entry i is bf16(i & 15)),
  exact, as every integer below 256 is in bf16.
- 8-bit: [T][K / 2][32] int8, byte l as above for k = 2b + p; widened through fp32.
- scales, mins: [T][G][16] (float16 or float32, as the checkpoint stores them).

y[r, n] = sum over groups j of (scale[n, j] * sum_{k in j} q[n, k] x[r, k]
                                + min[n, j] * sum_{k in j} x[r, k]);
the inner sums are exact products accumulated in fp32. bf16 rows enter vdpbf16ps as they are
(exact against the dequantized weights); float32 rows are split into two bf16 parts, hi + lo
(x - hi rounded), so the products keep ~16 bits more than one bf16 would (within fp32
summation noise of the float reference). Without mins (Q8_0, ...) the second term is
skipped (Q4_0 stores its -8 * scale as mins). Each row's result is computed by the same
sequence of operations whatever the number of rows in the call.

Streaming: a call of up to a few rows reads its tiles one at a time, in memory order, so a
thread's share of the weight is one sequential stream, prefetched PREFETCH (2 KiB) bytes
ahead (1 KiB: ~5% slower on the layers when this VM's memory was busy, level when quiet).
Blocks of 4 tiles side by side (4 streams ~4.6 KB apart, each too short to train the
hardware prefetcher) streamed at ~17 GB/s; one prefetched stream at ~22 (Q4_1 layers of the
bundled model at one row, 2 threads, Zen 4; the Q8_0 head 1.39x; same results bit for bit).
"""

LANES = r"""
#ifdef __AVX512BF16__
namespace lanes {

// bf16(i & 15) for i = 0..31: vpermw's table (it reads the low 5 bits of each index word).
alignas(64) static const uint16_t TABLE[32] = {
    0x0000, 0x3F80, 0x4000, 0x4040, 0x4080, 0x40A0, 0x40C0, 0x40E0,
    0x4100, 0x4110, 0x4120, 0x4130, 0x4140, 0x4150, 0x4160, 0x4170,
    0x0000, 0x3F80, 0x4000, 0x4040, 0x4080, 0x40A0, 0x40C0, 0x40E0,
    0x4100, 0x4110, 0x4120, 0x4130, 0x4140, 0x4150, 0x4160, 0x4170};

template <bool HALF>
static inline __m512 load16(const void* p) {
  if (HALF) return _mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(p)));
  return _mm512_loadu_ps(reinterpret_cast<const float*>(p));
}

static inline __m512bh bcast_pair(const uint16_t* x) {
  int32_t pair;
  std::memcpy(&pair, x, sizeof(pair));
  return (__m512bh)_mm512_set1_epi32(pair);
}

// Bytes ahead of the load that a single-tile block prefetches (its tiles are one stream).
constexpr int64_t PREFETCH = 2048;

// One 64-byte load of a 4-bit tile -> its four vdpbf16ps operands (exact bf16 values).
static inline void unpack4(__m512i w, __m512i table, __m512bh v[4]) {
  v[0] = (__m512bh)_mm512_permutexvar_epi16(w, table);
  v[1] = (__m512bh)_mm512_permutexvar_epi16(_mm512_srli_epi16(w, 4), table);
  v[2] = (__m512bh)_mm512_permutexvar_epi16(_mm512_srli_epi16(w, 8), table);
  v[3] = (__m512bh)_mm512_permutexvar_epi16(_mm512_srli_epi16(w, 12), table);
}

// 32 signed bytes of an 8-bit tile (one k pair of its 16 outputs) -> one operand.
static inline __m512bh unpack8(const int8_t* src) {
  const __m512 lo = _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(
      _mm_loadu_si128(reinterpret_cast<const __m128i*>(src))));
  const __m512 hi = _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(
      _mm_loadu_si128(reinterpret_cast<const __m128i*>(src + 16))));
  return _mm512_cvtne2ps_pbh(hi, lo);
}

struct Args {
  const uint8_t* qw;      // packed weights
  const void* scales;     // [T][G][16]
  const void* mins;       // [T][G][16] or nullptr
  const uint16_t* xh;     // [M][K] bf16 (hi part)
  const uint16_t* xl;     // [M][K] bf16 (lo part) or nullptr
  const float* xsum;      // [M][G]
  int64_t K, G, group, N;
  float* yf;              // [M][N] float32 out, or
  uint16_t* yb;           // [M][N] bf16 out
};

// Rows r0..r0+R, tiles t0..t0+T. With SCR the tiles come unpacked (unpack(): scr holds
// tile t0's bf16 operands, the next tile's after them) instead of being unpacked here; the
// operands are the same values and every row runs the same operations either way. T > 1
// only with SCR (two cached tiles share the rows' broadcasts); from memory, rows() streams
// one tile at a time and the block prefetches ahead in that stream.
template <int BITS, bool SPLIT, bool HALF, int R, int T, bool SCR = false>
static void block(const Args& a, int64_t r0, int64_t t0, const uint16_t* scr = nullptr) {
  __m512 acc[R][T], gacc[R][T];
  for (int r = 0; r < R; ++r)
    for (int t = 0; t < T; ++t) acc[r][t] = _mm512_setzero_ps();
  const __m512i table = _mm512_loadu_si512(TABLE);
  const int64_t K = a.K, g = a.group;
  const int64_t tile_bytes = BITS == 4 ? K / 2 * 16 : K * 16;
  const size_t sbytes = HALF ? 2 : 4;
  for (int64_t j = 0; j < a.G; ++j) {
    for (int r = 0; r < R; ++r)
      for (int t = 0; t < T; ++t) gacc[r][t] = _mm512_setzero_ps();
    const int64_t k0 = j * g;
    if (BITS == 4) {
      for (int64_t b = 0; b < g / 8; ++b) {
        const int64_t k = k0 + 8 * b;
#pragma GCC unroll 4
        for (int t = 0; t < T; ++t) {
          __m512bh v[4];
          if (SCR) {
            const uint16_t* u16 = scr + (t * (K / 8) + k / 8) * 128;
            for (int u = 0; u < 4; ++u) v[u] = (__m512bh)_mm512_loadu_si512(u16 + 32 * u);
          } else {
            const uint8_t* src = a.qw + (t0 + t) * tile_bytes + k * 8;
            if (T == 1) _mm_prefetch(reinterpret_cast<const char*>(src + PREFETCH), _MM_HINT_T0);
            unpack4(_mm512_loadu_si512(src), table, v);
          }
#pragma GCC unroll 4
          for (int r = 0; r < R; ++r) {
            const uint16_t* xh = a.xh + (r0 + r) * K + k;
#pragma GCC unroll 4
            for (int u = 0; u < 4; ++u) {
              gacc[r][t] = _mm512_dpbf16_ps(gacc[r][t], bcast_pair(xh + 2 * u), v[u]);
              if (SPLIT)
                gacc[r][t] = _mm512_dpbf16_ps(gacc[r][t],
                                              bcast_pair(a.xl + (r0 + r) * K + k + 2 * u), v[u]);
            }
          }
        }
      }
    } else {
      for (int64_t b = 0; b < g / 2; ++b) {
        const int64_t k = k0 + 2 * b;
#pragma GCC unroll 4
        for (int t = 0; t < T; ++t) {
          const int8_t* src =
              reinterpret_cast<const int8_t*>(a.qw) + (t0 + t) * tile_bytes + k * 16;
          if (T == 1 && !SCR && b % 2 == 0)
            _mm_prefetch(reinterpret_cast<const char*>(src + PREFETCH), _MM_HINT_T0);
          const __m512bh v = SCR
              ? (__m512bh)_mm512_loadu_si512(scr + (t * (K / 2) + k / 2) * 32)
              : unpack8(src);
#pragma GCC unroll 4
          for (int r = 0; r < R; ++r) {
            gacc[r][t] = _mm512_dpbf16_ps(gacc[r][t], bcast_pair(a.xh + (r0 + r) * K + k), v);
            if (SPLIT)
              gacc[r][t] = _mm512_dpbf16_ps(gacc[r][t], bcast_pair(a.xl + (r0 + r) * K + k), v);
          }
        }
      }
    }
#pragma GCC unroll 4
    for (int t = 0; t < T; ++t) {
      const int64_t off = ((t0 + t) * a.G + j) * 16;
      const __m512 d = load16<HALF>(static_cast<const char*>(a.scales) + off * sbytes);
      __m512 m = _mm512_setzero_ps();
      if (a.mins != nullptr)
        m = load16<HALF>(static_cast<const char*>(a.mins) + off * sbytes);
      for (int r = 0; r < R; ++r) {
        acc[r][t] = _mm512_fmadd_ps(gacc[r][t], d, acc[r][t]);
        if (a.mins != nullptr)
          acc[r][t] = _mm512_fmadd_ps(m, _mm512_set1_ps(a.xsum[(r0 + r) * a.G + j]), acc[r][t]);
      }
    }
  }
  for (int t = 0; t < T; ++t) {
    const int64_t n0 = (t0 + t) * 16;
    const int64_t left = std::min<int64_t>(16, a.N - n0);
    const __mmask16 mask = left >= 16 ? (__mmask16)0xFFFF : (__mmask16)((1u << left) - 1);
    for (int r = 0; r < R; ++r) {
      if (a.yf != nullptr)
        _mm512_mask_storeu_ps(a.yf + (r0 + r) * a.N + n0, mask, acc[r][t]);
      else
        _mm256_mask_storeu_epi16(a.yb + (r0 + r) * a.N + n0, mask,
                                 (__m256i)_mm512_cvtneps_pbh(acc[r][t]));
    }
  }
}

// Tiles [t0, t1) for rows [r0, r0 + R), one tile at a time (one prefetched stream).
template <int BITS, bool SPLIT, bool HALF, int R>
static void rows(const Args& a, int64_t r0, int64_t t0, int64_t t1) {
  for (int64_t t = t0; t < t1; ++t) block<BITS, SPLIT, HALF, R, 1>(a, r0, t);
}

// Tile t unpacked into dst: K * 16 bf16 operands, in the order block<..., SCR> reads them.
template <int BITS>
static void unpack(const Args& a, int64_t t, uint16_t* dst) {
  const int64_t K = a.K, tile_bytes = BITS == 4 ? K / 2 * 16 : K * 16;
  const uint8_t* src = a.qw + t * tile_bytes;
  if (BITS == 4) {
    const __m512i table = _mm512_loadu_si512(TABLE);
    for (int64_t b = 0; b < K / 8; ++b) {
      __m512bh v[4];
      unpack4(_mm512_loadu_si512(src + b * 64), table, v);
      for (int u = 0; u < 4; ++u) _mm512_storeu_si512(dst + (4 * b + u) * 32, (__m512i)v[u]);
    }
  } else {
    for (int64_t b = 0; b < K / 2; ++b)
      _mm512_storeu_si512(dst + b * 32,
                          (__m512i)unpack8(reinterpret_cast<const int8_t*>(src) + b * 32));
  }
}

// Every row against tiles t..t+T, unpacked once into scr.
template <int BITS, bool SPLIT, bool HALF, int T>
static void unpacked_rows(const Args& a, int64_t M, int64_t t, uint16_t* scr) {
  for (int i = 0; i < T; ++i) unpack<BITS>(a, t + i, scr + i * a.K * 16);
  int64_t r = 0;
  for (; r + 4 <= M; r += 4) block<BITS, SPLIT, HALF, 4, T, true>(a, r, t, scr);
  switch (M - r) {
    case 3: block<BITS, SPLIT, HALF, 3, T, true>(a, r, t, scr); break;
    case 2: block<BITS, SPLIT, HALF, 2, T, true>(a, r, t, scr); break;
    case 1: block<BITS, SPLIT, HALF, 1, T, true>(a, r, t, scr); break;
    default: break;
  }
}

// Calls of more than unpack_rows(BITS) rows unpack each tile once (to L1/L2) instead of once
// per block of 4 rows: prefill chunks and large batches run at the multiply-adds' pace.
// Measured on a Zen 4 (2 cores): 4-bit tiles pay for the scratch buffer's stores from ~16
// rows on (at 8 rows it is ~12% slower), 8-bit ones (dearer to unpack) from 8 (a 28 MB
// Q8_0 head at 7 rows: 2.28 ms inline, 2.45 through the scratch buffer).
constexpr int64_t unpack_rows(int bits) { return bits == 4 ? 12 : 7; }

template <int BITS, bool SPLIT, bool HALF>
static void run(const Args& a, int64_t M, int64_t tiles) {
  at::parallel_for(0, tiles, 1, [&](int64_t t0, int64_t t1) {
    if (M > unpack_rows(BITS)) {
      // (uninitialised: unpack() writes every operand a block then reads)
      const std::unique_ptr<uint16_t[]> scr(new uint16_t[2 * a.K * 16]);
      int64_t t = t0;
      for (; t + 2 <= t1; t += 2) unpacked_rows<BITS, SPLIT, HALF, 2>(a, M, t, scr.get());
      if (t < t1) unpacked_rows<BITS, SPLIT, HALF, 1>(a, M, t, scr.get());
      return;
    }
    // Chunks of tiles (~64 KiB of weights) outer, blocks of 4 rows inner: a call of more
    // than 4 rows reads each chunk from memory once, not once per block of rows (an 8-bit
    // head of 28 MB at 7 rows was streamed twice).
    const int64_t tile_bytes = BITS == 4 ? a.K / 2 * 16 : a.K * 16;
    const int64_t chunk = std::max<int64_t>(4, (65536 / tile_bytes) / 4 * 4);
    for (int64_t c0 = t0; c0 < t1; c0 += chunk) {
      const int64_t c1 = std::min(t1, c0 + chunk);
      int64_t r = 0;
      for (; r + 4 <= M; r += 4) rows<BITS, SPLIT, HALF, 4>(a, r, c0, c1);
      switch (M - r) {
        case 3: rows<BITS, SPLIT, HALF, 3>(a, r, c0, c1); break;
        case 2: rows<BITS, SPLIT, HALF, 2>(a, r, c0, c1); break;
        case 1: rows<BITS, SPLIT, HALF, 1>(a, r, c0, c1); break;
        default: break;
      }
    }
  });
}

}  // namespace lanes
#endif

bool lanes_supported() {
#ifdef __AVX512BF16__
  return true;
#else
  return false;
#endif
}

// x [M, K] (bf16 or float32) times a lanes-packed weight -> [M, n_out] in x's dtype.
torch::Tensor lanes_linear(torch::Tensor x, torch::Tensor qw, torch::Tensor scales,
                           torch::Tensor mins, int64_t bits, int64_t group, int64_t n_out) {
#ifdef __AVX512BF16__
  TORCH_CHECK(x.dim() == 2 && (x.scalar_type() == at::kBFloat16 ||
                               x.scalar_type() == at::kFloat), "lanes_linear: x [M, K] bf16/f32");
  TORCH_CHECK(bits == 4 || bits == 8, "lanes_linear: 4- or 8-bit weights");
  TORCH_CHECK(scales.dim() == 3 && scales.size(2) == 16, "lanes_linear: scales [T, G, 16]");
  x = x.contiguous();
  const int64_t M = x.size(0), K = x.size(1), tiles = scales.size(0), G = scales.size(1);
  TORCH_CHECK(G * group == K && group % (bits == 4 ? 8 : 2) == 0,
              "lanes_linear: K is not whole groups of the weight");
  TORCH_CHECK(qw.numel() == tiles * K * bits * 2, "lanes_linear: packed weight size");
  TORCH_CHECK(n_out <= tiles * 16 && n_out > (tiles - 1) * 16, "lanes_linear: n_out");
  const bool half = scales.scalar_type() == at::kHalf;
  TORCH_CHECK(half || scales.scalar_type() == at::kFloat, "lanes_linear: scale dtype");
  TORCH_CHECK(mins.numel() == 0 || (mins.scalar_type() == scales.scalar_type() &&
                                    mins.numel() == scales.numel()), "lanes_linear: mins");
  const bool split = x.scalar_type() == at::kFloat;
  // The rows as bf16 (hi, and lo = x - hi for float rows) and their sums per group, in one
  // fixed order per row.
  std::vector<uint16_t> xh(M * K), xl(split ? M * K : 0);
  std::vector<float> xsum(M * G);
  const float* xfp = split ? x.data_ptr<float>() : nullptr;
  const at::BFloat16* xbp = split ? nullptr : x.data_ptr<at::BFloat16>();
  for (int64_t r = 0; r < M; ++r)
    for (int64_t j = 0; j < G; ++j) {
      float s = 0.f;
      for (int64_t k = j * group; k < (j + 1) * group; ++k) {
        float v;
        if (split) {
          v = xfp[r * K + k];
          const c10::BFloat16 h(v);
          xh[r * K + k] = h.x;
          xl[r * K + k] = c10::BFloat16(v - static_cast<float>(h)).x;
        } else {
          const c10::BFloat16 h = xbp[r * K + k];
          xh[r * K + k] = h.x;
          v = static_cast<float>(h);
        }
        s += v;
      }
      xsum[r * G + j] = s;
    }
  auto y = torch::empty({M, n_out}, x.options());
  lanes::Args a{qw.data_ptr<uint8_t>(), scales.data_ptr(),
                mins.numel() ? mins.data_ptr() : nullptr,
                xh.data(), split ? xl.data() : nullptr, xsum.data(), K, G, group, n_out,
                split ? y.data_ptr<float>() : nullptr,
                split ? nullptr : reinterpret_cast<uint16_t*>(y.data_ptr<at::BFloat16>())};
#define QUIRE_LANES(B, S, H) \
  if (bits == B && split == S && half == H) { lanes::run<B, S, H>(a, M, tiles); return y; }
  QUIRE_LANES(4, false, true) QUIRE_LANES(4, false, false) QUIRE_LANES(4, true, true)
  QUIRE_LANES(4, true, false) QUIRE_LANES(8, false, true) QUIRE_LANES(8, false, false)
  QUIRE_LANES(8, true, true) QUIRE_LANES(8, true, false)
#undef QUIRE_LANES
  return y;
#else
  TORCH_CHECK(false, "lanes_linear: this build has no AVX-512 BF16");
#endif
}
"""
