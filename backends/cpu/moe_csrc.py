"""C++ source of the cpu backend's fused MoE layer (built with the other kernels by native.py;
it calls silu_mul from csrc.FUSED).

One call per layer does what backends/torch/models/moe.py does in some 8 torch ops per
expert: route (softmax -> top-k -> renormalize), group the (token, expert) pairs by expert
(a counting sort), and for each expert with tokens run its up projection, the activation and
its down projection on all its rows at once, adding the weighted results back per token.
The projections stay oneDNN's packed linears (mkldnn::_linear_pointwise through the
dispatcher), so the arithmetic is the Python path's; what goes is the per-op dispatch, about
a quarter of a decode step's MoE time on the dev box (benchmarks/MODELS.md).

Dimensions: T tokens, H hidden, E experts, I intermediate size, k experts per token.
"""

MOE = r"""
#include <ATen/core/dispatch/Dispatcher.h>

// y = x W^T through oneDNN's packed-weight linear (the op PackedLinear calls from Python).
static torch::Tensor packed_linear(const torch::Tensor& x, const torch::Tensor& w) {
  static const auto op =
      c10::Dispatcher::singleton().findSchemaOrThrow("mkldnn::_linear_pointwise", "");
  std::vector<c10::IValue> stack;
  stack.reserve(6);
  stack.emplace_back(x);
  stack.emplace_back(w);
  stack.emplace_back(c10::IValue());
  stack.emplace_back(std::string("none"));
  stack.emplace_back(c10::List<std::optional<at::Scalar>>());
  stack.emplace_back(c10::IValue());
  op.callBoxed(&stack);
  return stack[0].toTensor();
}

// rows itself up to pad[0]; above, the next multiple of pad[1] (of pad[3] past pad[2] rows):
// PackedLinear's rule (linear.py), so oneDNN sees the same bounded set of shapes.
static int64_t padded_rows(int64_t rows, const std::vector<int64_t>& pad) {
  if (rows <= pad[0]) return rows;
  const int64_t step = rows <= pad[2] ? pad[1] : pad[3];
  return (rows + step - 1) / step * step;
}

// One expert's rows [n, 2 kp_up] (bf16, zero past H) through vnni-packed up (gated) and down
// projections (gemm_csrc.GEMM) -> [n, 32 * down panels] bf16.
static torch::Tensor vnni_expert(const torch::Tensor& rows, const torch::Tensor& up,
                                 const torch::Tensor& down) {
  const int64_t n = rows.size(0), width = 16 * up.size(0);
  TORCH_CHECK(rows.size(1) == 2 * up.size(1) && width >= 2 * down.size(1),
              "moe_experts: vnni up and down projections do not chain");
  auto act = torch::empty({n, width}, rows.options());
  auto out = torch::empty({n, 32 * down.size(0)}, rows.options());
  const auto bf = [](const torch::Tensor& t) {
    return reinterpret_cast<uint16_t*>(t.data_ptr<at::BFloat16>());
  };
  vnni_gemm(bf(rows), n, rows.size(1), bf(up), up.size(0), up.size(1), bf(act), width, true);
  vnni_gemm(bf(act), n, width, bf(down), down.size(0), down.size(1), bf(out), out.size(1),
            false);
  return out;
}

// x [T, H]; router_logits [T, E] (any float dtype); up[e]: packed [2I, H] (gate | up);
// down[e]: packed [H, I] -> [T, H] in x's dtype. With vnni (bf16 only), up[e] and down[e]
// are vnni_pack'ed (gated up) and run by vnni_gemm instead of oneDNN. Each token's expert
// outputs are weighted (the product rounded to x's dtype, as the torch path does) and summed
// in fp32.
torch::Tensor moe_experts(torch::Tensor x, torch::Tensor router_logits, int64_t top_k,
                          bool renormalize, std::vector<torch::Tensor> up,
                          std::vector<torch::Tensor> down, std::vector<int64_t> pad, bool vnni) {
  TORCH_CHECK(x.dim() == 2 && x.is_contiguous(), "moe_experts: contiguous x [T, H]");
  const int64_t T = x.size(0), H = x.size(1), E = router_logits.size(1);
  TORCH_CHECK(router_logits.size(0) == T && (int64_t)up.size() == E && (int64_t)down.size() == E,
              "moe_experts: one up and one down projection per expert");
  TORCH_CHECK(top_k >= 1 && top_k <= E && pad.size() == 4, "moe_experts: bad top_k or pad");
  TORCH_CHECK(!vnni || x.scalar_type() == at::kBFloat16, "moe_experts: vnni experts need bf16");
  const auto probs = router_logits.to(torch::kFloat).contiguous();
  const float* lp = probs.data_ptr<float>();

  // Route: softmax over E, the k largest (ties to the lower expert id), optionally renormalized.
  std::vector<int64_t> ids(T * top_k);
  std::vector<float> wts(T * top_k);
  std::vector<float> p(E);
  for (int64_t t = 0; t < T; ++t) {
    const float* l = lp + t * E;
    const float mx = *std::max_element(l, l + E);
    float sum = 0.f;
    for (int64_t e = 0; e < E; ++e) sum += (p[e] = std::exp(l[e] - mx));
    float kept = 0.f;
    for (int64_t j = 0; j < top_k; ++j) {
      int64_t best = -1;
      for (int64_t e = 0; e < E; ++e)
        if (p[e] >= 0.f && (best < 0 || p[e] > p[best])) best = e;
      ids[t * top_k + j] = best;
      wts[t * top_k + j] = p[best] / sum;
      kept += p[best] / sum;
      p[best] = -1.f;  // taken
    }
    if (renormalize)
      for (int64_t j = 0; j < top_k; ++j) wts[t * top_k + j] /= kept;
  }

  // Group the (token, expert) pairs by expert, stably.
  std::vector<int64_t> start(E + 1, 0);
  for (int64_t i = 0; i < T * top_k; ++i) ++start[ids[i] + 1];
  for (int64_t e = 0; e < E; ++e) start[e + 1] += start[e];
  std::vector<int64_t> pair(T * top_k), fill(start.begin(), start.end() - 1);
  for (int64_t i = 0; i < T * top_k; ++i) pair[fill[ids[i]]++] = i;

  auto acc = torch::zeros({T, H}, x.options().dtype(torch::kFloat));
  float* ap = acc.data_ptr<float>();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, x.scalar_type(), "moe_experts", [&] {
    const scalar_t* xp = x.data_ptr<scalar_t>();
    for (int64_t e = 0; e < E; ++e) {
      const int64_t n = start[e + 1] - start[e];
      if (n == 0) continue;
      const int64_t width = vnni ? 2 * up[e].size(1) : H;
      auto rows = vnni ? torch::empty({n, width}, x.options())
                       : torch::zeros({padded_rows(n, pad), H}, x.options());
      scalar_t* rp = rows.data_ptr<scalar_t>();
      for (int64_t r = 0; r < n; ++r) {
        std::memcpy(rp + r * width, xp + (pair[start[e] + r] / top_k) * H, H * sizeof(scalar_t));
        std::fill(rp + r * width + H, rp + (r + 1) * width, scalar_t(0));
      }
      const auto out = vnni ? vnni_expert(rows, up[e], down[e])
                            : packed_linear(silu_mul(packed_linear(rows, up[e])), down[e]);
      TORCH_CHECK(out.is_contiguous() && out.size(1) >= H, "moe_experts: down projection shape");
      const int64_t ld = out.size(1);
      const scalar_t* op = out.data_ptr<scalar_t>();
      for (int64_t r = 0; r < n; ++r) {
        const int64_t i = pair[start[e] + r];
        const float w = static_cast<float>(static_cast<scalar_t>(wts[i]));
        float* a = ap + (i / top_k) * H;
        const scalar_t* o = op + r * ld;
        for (int64_t h = 0; h < H; ++h)
          a[h] += static_cast<float>(static_cast<scalar_t>(static_cast<float>(o[h]) * w));
      }
    }
  });
  return acc.to(x.scalar_type());
}
"""
