"""C++ source of the readers of a lanes-packed weight (lanes_csrc.py's layout): rows back as
float32 for embedding lookups (lanes_dequantize), and the whole weight transposed
(lanes_dequantize_t, the layer's reference product and QuantKernel.dequantize). Built with
the other native kernels by native.py, after lanes_csrc.py, whose table it uses.
"""

LANES_DEQUANT = r"""
// A lanes-packed weight as the dequantizers read it: sizes, and scales / mins as float32.
struct Weight {
  torch::Tensor s, m;
  int64_t tiles, G, K;
  const uint8_t* q;
  const float *sp, *mp;
  Weight(const torch::Tensor& qw, const torch::Tensor& scales, const torch::Tensor& mins,
         int64_t bits, int64_t group)
      : s(scales.to(at::kFloat).contiguous()),
        m(mins.numel() ? mins.to(at::kFloat).contiguous() : mins),
        tiles(scales.size(0)), G(scales.size(1)), K(G * group), q(qw.data_ptr<uint8_t>()),
        sp(s.data_ptr<float>()), mp(m.numel() ? m.data_ptr<float>() : nullptr) {
    TORCH_CHECK(qw.numel() == tiles * K * bits * 2, "lanes: packed weight size");
  }
};

// Rows ids of the weight as float32 [len(ids), K] (calls with more rows than the kernel
// takes; embedding lookups).
torch::Tensor lanes_dequantize(torch::Tensor qw, torch::Tensor scales, torch::Tensor mins,
                               int64_t bits, int64_t group, torch::Tensor ids) {
  TORCH_CHECK(ids.dim() == 1 && ids.scalar_type() == at::kLong, "lanes_dequantize: ids");
  const int64_t n_out = ids.size(0), tiles = scales.size(0), G = scales.size(1), K = G * group;
  TORCH_CHECK(qw.numel() == tiles * K * bits * 2, "lanes: packed weight size");
  TORCH_CHECK(n_out == 0 || (ids.min().item<int64_t>() >= 0 &&
                             ids.max().item<int64_t>() < tiles * 16),
              "lanes_dequantize: row id out of range");
  // Only the looked-up rows' tiles of scales and mins as float32 (an embedding's whole
  // table of them converted per lookup cost more than the lookup itself).
  const torch::Tensor tile_ids = ids.div(16, "floor");
  const torch::Tensor s = scales.index_select(0, tile_ids).to(at::kFloat).contiguous();
  const torch::Tensor m =
      mins.numel() ? mins.index_select(0, tile_ids).to(at::kFloat).contiguous() : mins;
  const int64_t* id = ids.data_ptr<int64_t>();
  auto w = torch::empty({n_out, K}, scales.options().dtype(at::kFloat));
  const uint8_t* q = qw.data_ptr<uint8_t>();
  const float *sp = s.data_ptr<float>(), *mp = m.numel() ? m.data_ptr<float>() : nullptr;
  float* out = w.data_ptr<float>();
  at::parallel_for(0, n_out, 16, [&](int64_t n0, int64_t n1) {
    for (int64_t i = n0; i < n1; ++i) {
      const int64_t n = id[i], t = n / 16, o = n % 16;
      float* row = out + i * K;
      for (int64_t j = 0; j < G; ++j) {
        const int64_t idx = (i * G + j) * 16 + o;  // row i's tile in s and m
        const float sc = sp[idx], mn = mp ? mp[idx] : 0.f;
        if (bits == 4) {
          for (int64_t b = j * group / 8; b < (j + 1) * group / 8; ++b) {
            uint16_t word[2];  // k parity 0 and 1 of output o
            std::memcpy(word, q + ((t * (K / 8) + b) * 32 + 2 * o) * 2, sizeof(word));
            for (int u = 0; u < 4; ++u)
              for (int p = 0; p < 2; ++p)
                row[8 * b + 2 * u + p] = static_cast<float>((word[p] >> (4 * u)) & 0xF) * sc + mn;
          }
        } else {
          const int8_t* q8 = reinterpret_cast<const int8_t*>(q);
          for (int64_t b = j * group / 2; b < (j + 1) * group / 2; ++b)
            for (int p = 0; p < 2; ++p)
              row[2 * b + p] = static_cast<float>(q8[(t * (K / 2) + b) * 32 + 2 * o + p]) * sc + mn;
        }
      }
    }
  });
  return w;
}

// The weight transposed, float32 [K, 16 * tiles] (columns past n_out are the zero padding):
// what a call with more rows than the lanes kernel takes multiplies, x @ W^T. One pass in
// the packed order: a tile's k pair unpacks to its 16 outputs' values for both k at once.
torch::Tensor lanes_dequantize_t(torch::Tensor qw, torch::Tensor scales, torch::Tensor mins,
                                 int64_t bits, int64_t group) {
  const Weight wt(qw, scales, mins, bits, group);
  const int64_t tiles = wt.tiles, G = wt.G, K = wt.K, ld = tiles * 16;
  auto result = torch::empty({K, ld}, scales.options().dtype(at::kFloat));
  const uint8_t* q = wt.q;
  const float *sp = wt.sp, *mp = wt.mp;
  float* out = result.data_ptr<float>();
#ifdef __AVX512BF16__
  const __m512i table = _mm512_loadu_si512(lanes::TABLE);
  const __m512i high = _mm512_set1_epi32(static_cast<int32_t>(0xFFFF0000u));
  constexpr int RN = _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC;
  at::parallel_for(0, tiles, 1, [&](int64_t t0, int64_t t1) {
    for (int64_t t = t0; t < t1; ++t)
      for (int64_t j = 0; j < G; ++j) {
        const __m512 d = _mm512_loadu_ps(sp + (t * G + j) * 16);
        const __m512 mn = mp ? _mm512_loadu_ps(mp + (t * G + j) * 16) : _mm512_setzero_ps();
        // v: 32 bf16 words, (output o, parity p) at lane 2o + p, for inputs k and k + 1
        auto put = [&](__m512i v, int64_t k) {
          const __m512 even = _mm512_castsi512_ps(_mm512_slli_epi32(v, 16));
          const __m512 odd = _mm512_castsi512_ps(_mm512_and_si512(v, high));
          // q * d + min with two roundings, as the reference dequantizes (no fused FMA)
          _mm512_storeu_ps(out + k * ld + t * 16,
                           _mm512_add_round_ps(_mm512_mul_round_ps(even, d, RN), mn, RN));
          _mm512_storeu_ps(out + (k + 1) * ld + t * 16,
                           _mm512_add_round_ps(_mm512_mul_round_ps(odd, d, RN), mn, RN));
        };
        if (bits == 4) {
          for (int64_t b = j * group / 8; b < (j + 1) * group / 8; ++b) {
            const __m512i w = _mm512_loadu_si512(q + (t * (K / 8) + b) * 64);
            for (int u = 0; u < 4; ++u)
              put(_mm512_permutexvar_epi16(_mm512_srl_epi16(w, _mm_cvtsi32_si128(4 * u)), table),
                  8 * b + 2 * u);
          }
        } else {
          for (int64_t b = j * group / 2; b < (j + 1) * group / 2; ++b) {
            const int8_t* src = reinterpret_cast<const int8_t*>(q) + (t * (K / 2) + b) * 32;
            const __m512 lo = _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(
                _mm_loadu_si128(reinterpret_cast<const __m128i*>(src))));
            const __m512 hi = _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(
                _mm_loadu_si128(reinterpret_cast<const __m128i*>(src + 16))));
            put((__m512i)_mm512_cvtne2ps_pbh(hi, lo), 2 * b);
          }
        }
      }
  });
#else
  TORCH_CHECK(false, "lanes_dequantize_t: this build has no AVX-512 BF16");
#endif
  return result;
}
"""
