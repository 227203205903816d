"""C++ source of the cpu backend's weight-only quantized matmul (built by quant_native.py).

Layout: quire.models.quant.PackedWeight — N output rows, K inputs, groups of GS inputs
(32; 16 for Q6_K's 8-bit values), w = scale * q + min per (row, group); 4-bit q as GGUF
keeps it (byte j of a group of 32: input j low nibble, input j + 16 high nibble), 8-bit q as
signed bytes; scales and mins float16 (S = uint16_t) or float32 (K-quants).

Paths, chosen at run time by what the CPU reports: AVX-512 (F + BW + VL, with FMA and F16C:
16-float vectors, one per 16 inputs), else AVX2 + FMA + F16C (8-float vectors), else portable
C++. The SIMD functions carry target attributes, so one build serves every x86-64 machine.

The source is split in two Python modules: this one holds the portable code and the entry
points (PORTABLE before, ENTRY after), quant_simd_csrc.py the x86 SIMD tiles between them;
quant_native.py builds PORTABLE + SIMD + ENTRY as one translation unit.
"""

PORTABLE = r"""
#include <torch/extension.h>
#include <ATen/Parallel.h>
#include <c10/util/Half.h>
#include <algorithm>
#include <cmath>
#include <cstring>
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

"""

ENTRY = r"""

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

// Rows [n0, n1) of the dequantized [N, K] float matrix, into out (row n0 first).
template <int BITS, int GS, typename S>
static void dequant_rows(const uint8_t* qw, const S* sc, const S* mn, float* out, int64_t K,
                         int64_t n0, int64_t n1) {
  const int64_t G = K / GS;
  float w[32];
  for (int64_t n = n0; n < n1; ++n)
    for (int64_t g = 0; g < G; ++g) {
      unpack_group<BITS, GS>(qw, K, n, g, w);
      const float s = sval(sc[n * G + g]), b = mn ? sval(mn[n * G + g]) : 0.f;
      for (int j = 0; j < GS; ++j) out[(n - n0) * K + g * GS + j] = s * w[j] + b;
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

// y [M, N] float32 in the caller's dtype: bfloat16 rounded to nearest even here (as torch
// does), float16 through torch.
static torch::Tensor narrowed(const torch::Tensor& y, c10::ScalarType type) {
  if (type == torch::kFloat) return y;
  if (type != torch::kBFloat16) return y.to(type);
  auto out = torch::empty(y.sizes(), y.options().dtype(torch::kBFloat16));
  const float* src = y.data_ptr<float>();
  uint16_t* dst = reinterpret_cast<uint16_t*>(out.data_ptr());
  for (int64_t i = 0; i < y.numel(); ++i) {
    uint32_t u;
    std::memcpy(&u, &src[i], 4);
    dst[i] = (u & 0x7fffffffu) > 0x7f800000u ? uint16_t(0x7fc0)
                                              : uint16_t((u + 0x7fffu + ((u >> 16) & 1u)) >> 16);
  }
  return out;
}

// x [M, K] (float32, bfloat16 or float16; a decode step's few rows); qweight; scales
// [N, K/group] and mins (or an empty tensor), float16 or float32 -> y [M, N] in x's dtype,
// computed in float32. path: the most this call may use (2 AVX-512, 1 AVX2, 0 portable;
// tests pin lower ones), capped by what the CPU has; int8_act: 8-bit activations (AVX2,
// groups of 32 with float16 scales; faster, not exact). The conversions and the per-group
// sums of x happen here, not as separate tensor ops: a decode step makes ~4 such calls
// per layer, so each op saved is felt.
torch::Tensor quant_gemv(torch::Tensor x_in, torch::Tensor qweight, torch::Tensor scales,
                         torch::Tensor mins, int64_t bits, int64_t group, int64_t max_path,
                         bool int8_act) {
  const int64_t M = x_in.size(0), K = x_in.size(1), N = scales.size(0), G = K / group;
  const auto in_type = x_in.scalar_type();
  const bool is_float = in_type == torch::kFloat;
  TORCH_CHECK(is_float || in_type == torch::kBFloat16 || in_type == torch::kHalf,
              "quant_gemv: x must be float32, bfloat16 or float16");
  const bool bf16 = in_type == torch::kBFloat16;
  // float32 x as it is; bfloat16 widened here (exactly); float16 through torch.
  const torch::Tensor x = bf16 ? x_in.contiguous()
                               : (is_float ? x_in : x_in.to(torch::kFloat)).contiguous();
  std::vector<float> xbuf(bf16 ? M * K : 0);
  if (bf16) {
    const uint16_t* xb = reinterpret_cast<const uint16_t*>(x.data_ptr());
    for (int64_t i = 0; i < M * K; ++i) {
      const uint32_t u = static_cast<uint32_t>(xb[i]) << 16;
      std::memcpy(&xbuf[i], &u, 4);
    }
  }
  auto y = torch::empty({M, N}, x.options().dtype(torch::kFloat));
  std::vector<float> xsum(M * G);
  const float* xp = bf16 ? xbuf.data() : x.data_ptr<float>();
  for (int64_t i = 0; i < M * G; ++i) {
    float acc = 0.f;
    for (int64_t j = 0; j < group; ++j) acc += xp[i * group + j];
    xsum[i] = acc;
  }
  const float* sp = xsum.data();
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
    return narrowed(y, in_type);
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
  return narrowed(y, in_type);
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
      dequant_rows<decltype(b)::value, decltype(gs)::value, S>(q, sc, mn, o + n0 * K, K, n0,
                                                               n1);
    });
  });
  return out;
}

// x [M, K] times the packed weight for calls of more rows than quant_gemv takes: blocks of
// outputs (~1 MiB of float32 weights each, so a block stays in L2) dequantized, then one
// float32 GEMM per block, instead of the whole weight dequantized to memory first (a 49152 x
// 576 head would write and re-read 113 MB per call). Returns float32 [M, N].
torch::Tensor quant_matmul(torch::Tensor x, torch::Tensor qweight, torch::Tensor scales,
                           torch::Tensor mins, int64_t bits, int64_t group, int64_t K) {
  TORCH_CHECK(x.dim() == 2 && x.size(1) == K, "quant_matmul: x [M, K]");
  const int64_t N = scales.size(0), M = x.size(0);
  const torch::Tensor xf = x.to(at::kFloat).contiguous();
  auto y = torch::empty({M, N}, xf.options());
  const int64_t block = std::max<int64_t>(16, ((int64_t{1} << 20) / (4 * K)) / 16 * 16);
  auto buf = torch::empty({std::min(block, N), K}, xf.options());
  auto part = torch::empty({M, std::min(block, N)}, xf.options());
  const uint8_t* q = reinterpret_cast<const uint8_t*>(qweight.data_ptr());
  dispatch(bits, group, scales, [&](auto b, auto gs, auto s) {
    using S = decltype(s);
    const S* sc = ptr<S>(scales);
    const S* mn = ptr<S>(mins);
    for (int64_t n0 = 0; n0 < N; n0 += block) {
      const int64_t nb = std::min(block, N - n0);
      float* o = buf.data_ptr<float>();
      at::parallel_for(n0, n0 + nb, 16, [&](int64_t a0, int64_t a1) {
        dequant_rows<decltype(b)::value, decltype(gs)::value, S>(q, sc, mn, o + (a0 - n0) * K,
                                                                 K, a0, a1);
      });
      torch::Tensor out = part.narrow(1, 0, nb);
      at::mm_out(out, xf, buf.narrow(0, 0, nb).t());
      y.narrow(1, n0, nb).copy_(out);
    }
  });
  return y;
}

// The path quant_gemv takes on this CPU: "avx512", "avx2" (AVX2 + FMA + F16C) or
// "portable" (plain C++, any CPU).
// quant_gemv's address, for the fused decode layer (layer_csrc.py), which is built into the
// other extension and calls it through a pointer of this exact signature.
int64_t quant_gemv_address() {
  torch::Tensor (*fn)(torch::Tensor, torch::Tensor, torch::Tensor, torch::Tensor, int64_t,
                      int64_t, int64_t, bool) = &quant_gemv;
  return reinterpret_cast<int64_t>(fn);
}

std::string quant_isa() {
  const int p = best_path();
  return p == 2 ? "avx512" : p == 1 ? "avx2" : "portable";
}
"""
