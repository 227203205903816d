"""C++ source of the cpu backend's fused decode layer (built with the other native kernels by
native.py, after csrc.py's and lanes_csrc.py's functions, which it calls; decode_layer.py
decides when it runs).

Why: at batch 1 a decode step of a 30-layer model is ~15 module calls per layer from
Python, and each costs microseconds of dispatch that are not weight bytes (a cProfile of the
bundled model put about a third of a token's time there). decode_layer runs one Llama-family
layer, for a step whose every row is a decode row, as the very same kernels in the very same
order as the module path (rms_norm, the projections' kernels -- lanes_linear, vnni_linear or
the rows kernel's quant_gemv --, rope_inplace, the KV write, paged_decode, silu_mul, the
residual adds; the KV write and the adds as plain loops with torch's rounding), so its
results are bit-identical to that path's; it only stops returning to Python between them.
Under tensor parallelism it returns to Python twice, for the all-reduces of the o and down
projections' partial sums. Each layer's weights are given once (decode_plan_new: a plan
named by a handle); decode_layers runs a model's whole stack of layers in one call.
"""

LAYER = r"""
// The new keys and values of a decode step's rows into their cache slots (a plain copy per
// row: what two index_copy_ calls did, without their dispatch). k, v [T, Hkv, D] views with
// contiguous rows; kv_cache [2, N, S, Hkv, D] of their dtype.
static void write_kv(const torch::Tensor& k, const torch::Tensor& v, torch::Tensor& kv_cache,
                     const torch::Tensor& slots) {
  TORCH_CHECK(k.scalar_type() == kv_cache.scalar_type() && kv_cache.is_contiguous() &&
              k.stride(2) == 1 && k.stride(1) == k.size(2) && v.stride(2) == 1 &&
              v.stride(1) == v.size(2) && slots.scalar_type() == at::kLong,
              "decode_layer: KV rows and cache");
  const int64_t T = k.size(0), es = k.element_size(), row = k.size(1) * k.size(2) * es;
  const int64_t plane = kv_cache.numel() / 2 * es, n_slots = plane / row;
  char* cache = static_cast<char*>(kv_cache.data_ptr());
  const char* kp = static_cast<const char*>(k.data_ptr());
  const char* vp = static_cast<const char*>(v.data_ptr());
  const int64_t* sp = slots.data_ptr<int64_t>();
  for (int64_t t = 0; t < T; ++t) {
    TORCH_CHECK(sp[t] >= 0 && sp[t] < n_slots, "decode_layer: KV slot out of range");
    std::memcpy(cache + sp[t] * row, kp + t * k.stride(0) * es, row);
    std::memcpy(cache + plane + sp[t] * row, vp + t * v.stride(0) * es, row);
  }
}

// a + b rounded to their dtype, as torch's add (rows of a may be strided; b contiguous).
static torch::Tensor add_rows(const torch::Tensor& a, const torch::Tensor& b) {
  if (a.dim() != 2 || a.stride(1) != 1 || !b.is_contiguous() || a.sizes() != b.sizes() ||
      a.scalar_type() != b.scalar_type())
    return a + b;
  const int64_t T = a.size(0), n = a.size(1), sa = a.stride(0);
  auto out = torch::empty({T, n}, a.options());
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, a.scalar_type(), "add_rows", [&] {
    const scalar_t* ap = a.data_ptr<scalar_t>();
    const scalar_t* bp = b.data_ptr<scalar_t>();
    scalar_t* op = out.data_ptr<scalar_t>();
    for (int64_t t = 0; t < T; ++t)
      for (int64_t i = 0; i < n; ++i)
        op[t * n + i] = static_cast<scalar_t>(static_cast<float>(ap[t * sa + i]) +
                                              static_cast<float>(bp[t * n + i]));
  });
  return out;
}

using RowsKernel = torch::Tensor (*)(torch::Tensor, torch::Tensor, torch::Tensor, torch::Tensor,
                                     int64_t, int64_t, int64_t, bool);

// A layer's plan, made once (decode_plan_new) so a step's call converts no weight lists:
// w: input norm, post-attention norm, then per projection (qkv, o, gate_up, down) its three
// tensors, then the qkv bias (empty: none); ints: per projection (kind, bits, group, n_out)
// -- kind 0: lanes (qweight, scales, mins), 1: the bf16 GEMM (packed, -, -; n_out whole
// panels), 2: the rows kernel (qweight, scales, mins) --, then Hq, Hkv, D, sliding window,
// then the rows kernel's (address of quant_gemv, max_path, int8 activations). all_reduce:
// None, or (tensor parallelism) the Python callable that sums the o and down projections'
// partial outputs over the ranks in place (the module path's RowParallel, called at the
// same two points); with a shared-memory communicator, its segment (shm, comm_csrc.py)
// takes the partial sums that fit a slot without returning to Python.
struct LayerPlan {
  std::vector<torch::Tensor> w;
  std::vector<int64_t> ints;
  double eps, scale, soft_cap;
  py::object all_reduce;
  ShmComm shm;
};

// Plans by handle. Never destroyed (a static destructor would drop Python references after
// the interpreter is gone); decode_plan_free releases one (decode_layer.py's finalizer).
static std::vector<LayerPlan*>& plans() {
  static auto* all = new std::vector<LayerPlan*>();
  return *all;
}

// shm: empty, or the communicator's segment (address, rank, size, slot bytes) with its
// state tensor, timeout and peers_alive callable (ShmCommunicator.native_spec()).
int64_t decode_plan_new(std::vector<torch::Tensor> w, std::vector<int64_t> ints, double eps,
                        double scale, double soft_cap, py::object all_reduce,
                        std::vector<int64_t> shm, torch::Tensor shm_state, double timeout_s,
                        py::object peers_alive) {
  TORCH_CHECK(w.size() == 15 && ints.size() == 23, "decode_plan_new: weights and sizes");
  TORCH_CHECK(shm.empty() || (shm.size() == 4 && shm_state.scalar_type() == at::kLong &&
                              shm_state.numel() == 3 && shm_state.is_contiguous()),
              "decode_plan_new: shared-memory communicator");
  auto& all = plans();
  auto* plan = new LayerPlan{std::move(w), std::move(ints), eps, scale, soft_cap, all_reduce};
  if (!shm.empty())
    plan->shm = ShmComm{reinterpret_cast<char*>(shm[0]), shm[1], shm[2], shm[3], shm_state,
                        timeout_s, peers_alive};
  for (size_t i = 0; i < all.size(); ++i)
    if (all[i] == nullptr) {
      all[i] = plan;
      return static_cast<int64_t>(i);
    }
  all.push_back(plan);
  return static_cast<int64_t>(all.size()) - 1;
}

void decode_plan_free(int64_t handle) {
  auto& all = plans();
  if (handle >= 0 && handle < static_cast<int64_t>(all.size())) {
    delete all[handle];
    all[handle] = nullptr;
  }
}

static const LayerPlan& plan_at(int64_t handle) {
  auto& all = plans();
  TORCH_CHECK(handle >= 0 && handle < static_cast<int64_t>(all.size()) && all[handle],
              "decode_layer: no such plan");
  return *all[handle];
}

// One layer: x [T, hidden]; cos, sin [T, D] fp32; kv_cache [2, N, S, Hkv, D]; slots [T]
// int64; block_tables [T, B] int32; seq_lens [T] int32.
static torch::Tensor run_layer(const LayerPlan& pl, torch::Tensor x, const torch::Tensor& cos,
                               const torch::Tensor& sin, torch::Tensor& kv_cache,
                               const torch::Tensor& slots, const torch::Tensor& block_tables,
                               const torch::Tensor& seq_lens) {
  const std::vector<torch::Tensor>& w = pl.w;
  const std::vector<int64_t>& ints = pl.ints;
  const double eps = pl.eps;
  const int64_t T = x.size(0), Hq = ints[16], Hkv = ints[17], D = ints[18];
  const RowsKernel rows_kernel = reinterpret_cast<RowsKernel>(ints[20]);
  auto proj = [&](const torch::Tensor& in, int i) {
    const int64_t* p = ints.data() + 4 * i;
    const torch::Tensor &a = w[2 + 3 * i], &b = w[3 + 3 * i], &c = w[4 + 3 * i];
    if (p[0] == 1) return vnni_linear(in.contiguous(), a, false);
    if (p[0] == 2) {
      TORCH_CHECK(rows_kernel != nullptr, "decode_layer: no rows kernel given");
      return rows_kernel(in, a, b, c, p[1], p[2], ints[21], ints[22] != 0);
    }
    return lanes_linear(in, a, b, c, p[1], p[2], p[3]);
  };
  auto reduced = [&](torch::Tensor partial) {
    if (pl.all_reduce.is_none()) return partial;
    if (pl.shm.base != nullptr && partial.is_contiguous() &&
        partial.numel() * partial.element_size() <= pl.shm.slot_bytes) {
      shm_all_reduce(pl.shm, partial);
      return partial;
    }
    return pl.all_reduce(partial).cast<torch::Tensor>();
  };
  torch::Tensor qkv = proj(rms_norm(x, w[0], eps), 0);
  if (w[14].numel()) qkv = qkv + w[14];
  const int64_t qs = Hq * D, ks = Hkv * D;
  torch::Tensor q = qkv.narrow(1, 0, qs).view({T, Hq, D});
  torch::Tensor k = qkv.narrow(1, qs, ks).view({T, Hkv, D});
  torch::Tensor v = qkv.narrow(1, qs + ks, ks).view({T, Hkv, D});
  rope_inplace(q, k, cos, sin);
  write_kv(k, v, kv_cache, slots);
  torch::Tensor attn = paged_decode(q.contiguous(), kv_cache[0], kv_cache[1], block_tables,
                                    seq_lens, pl.scale, ints[19], pl.soft_cap, 0);
  x = add_rows(x, reduced(proj(attn.reshape({T, -1}), 1)).contiguous());
  return add_rows(x, reduced(proj(silu_mul(proj(rms_norm(x, w[1], eps), 2)), 3)).contiguous());
}

torch::Tensor decode_layer(int64_t handle, torch::Tensor x, torch::Tensor cos,
                           torch::Tensor sin, torch::Tensor kv_cache, torch::Tensor slots,
                           torch::Tensor block_tables, torch::Tensor seq_lens) {
  return run_layer(plan_at(handle), x, cos, sin, kv_cache, slots, block_tables, seq_lens);
}

// Every layer of a model in one call (layer i: plan handles[i], cache kv_caches[i]), for a
// step whose layers all attend with the same rows and rotary table.
torch::Tensor decode_layers(std::vector<int64_t> handles, torch::Tensor x, torch::Tensor cos,
                            torch::Tensor sin, std::vector<torch::Tensor> kv_caches,
                            torch::Tensor slots, torch::Tensor block_tables,
                            torch::Tensor seq_lens) {
  TORCH_CHECK(handles.size() == kv_caches.size(), "decode_layers: one cache per layer");
  for (size_t i = 0; i < handles.size(); ++i)
    x = run_layer(plan_at(handles[i]), x, cos, sin, kv_caches[i], slots, block_tables,
                  seq_lens);
  return x;
}
"""
