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
#include <string>

#define QUIRE_CLONES __attribute__((target_clones("avx512f,avx512bw,avx512vl,fma", "avx2,fma", "default")))

static inline float h2f(uint16_t h) { return static_cast<float>(c10::Half(h, c10::Half::from_bits())); }

// Rows [n0, n1) of y[M, N] = x[M, K] W^T. xsum[M, K/32]: each group's sum of x (the min
// term). One pass over the weights for all M rows: each group is unpacked once to floats.
QUIRE_CLONES
static void gemv_q4(const float* x, const float* xsum, const uint8_t* qw, const uint16_t* sc,
                    const uint16_t* mn, float* y, int64_t M, int64_t N, int64_t K,
                    int64_t n0, int64_t n1) {
  const int64_t G = K / 32;
  float w[32];
  float acc[16];
  for (int64_t n = n0; n < n1; ++n) {
    for (int64_t m0 = 0; m0 < M; m0 += 16) {
      const int64_t mc = std::min<int64_t>(16, M - m0);
      for (int64_t m = 0; m < mc; ++m) acc[m] = 0.f;
      for (int64_t g = 0; g < G; ++g) {
        const uint8_t* q = qw + n * (K / 2) + g * 16;
        for (int j = 0; j < 16; ++j) {
          w[j] = static_cast<float>(q[j] & 15);
          w[j + 16] = static_cast<float>(q[j] >> 4);
        }
        const float s = h2f(sc[n * G + g]), b = mn ? h2f(mn[n * G + g]) : 0.f;
        for (int64_t m = 0; m < mc; ++m) {
          const float* xm = x + (m0 + m) * K + g * 32;
          float d = 0.f;
          for (int j = 0; j < 32; ++j) d += w[j] * xm[j];
          acc[m] += s * d + b * xsum[(m0 + m) * G + g];
        }
      }
      for (int64_t m = 0; m < mc; ++m) y[(m0 + m) * N + n] = acc[m];
    }
  }
}

QUIRE_CLONES
static void gemv_q8(const float* x, const float* xsum, const int8_t* qw, const uint16_t* sc,
                    const uint16_t* mn, float* y, int64_t M, int64_t N, int64_t K,
                    int64_t n0, int64_t n1) {
  const int64_t G = K / 32;
  float w[32];
  float acc[16];
  for (int64_t n = n0; n < n1; ++n) {
    for (int64_t m0 = 0; m0 < M; m0 += 16) {
      const int64_t mc = std::min<int64_t>(16, M - m0);
      for (int64_t m = 0; m < mc; ++m) acc[m] = 0.f;
      for (int64_t g = 0; g < G; ++g) {
        const int8_t* q = qw + n * K + g * 32;
        for (int j = 0; j < 32; ++j) w[j] = static_cast<float>(q[j]);
        const float s = h2f(sc[n * G + g]), b = mn ? h2f(mn[n * G + g]) : 0.f;
        for (int64_t m = 0; m < mc; ++m) {
          const float* xm = x + (m0 + m) * K + g * 32;
          float d = 0.f;
          for (int j = 0; j < 32; ++j) d += w[j] * xm[j];
          acc[m] += s * d + b * xsum[(m0 + m) * G + g];
        }
      }
      for (int64_t m = 0; m < mc; ++m) y[(m0 + m) * N + n] = acc[m];
    }
  }
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
// float16 -> y [M, N] float32.
torch::Tensor quant_gemv(torch::Tensor x, torch::Tensor qweight, torch::Tensor scales,
                         torch::Tensor mins, int64_t bits) {
  const int64_t M = x.size(0), K = x.size(1), N = scales.size(0), G = K / 32;
  auto y = torch::empty({M, N}, x.options());
  auto xsum = x.view({M, G, 32}).sum(2).contiguous();
  const float* xp = x.data_ptr<float>();
  const float* sp = xsum.data_ptr<float>();
  const uint16_t* sc = half_ptr(scales);
  const uint16_t* mn = half_ptr(mins);
  float* yp = y.data_ptr<float>();
  at::parallel_for(0, N, 16, [&](int64_t n0, int64_t n1) {
    if (bits == 4)
      gemv_q4(xp, sp, qweight.data_ptr<uint8_t>(), sc, mn, yp, M, N, K, n0, n1);
    else
      gemv_q8(xp, sp, qweight.data_ptr<int8_t>(), sc, mn, yp, M, N, K, n0, n1);
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

std::string quant_isa() {
  __builtin_cpu_init();
  if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
      __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("fma"))
    return "avx512";
  if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) return "avx2";
  return "baseline";
}
"""
