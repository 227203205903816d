"""C++ source of the cpu backend's fused decode layer (built with the other native kernels by
native.py, after csrc.py's and lanes_csrc.py's functions, which it calls; decode_layer.py
decides when it runs).

Why: at batch 1 a decode step of a 30-layer model is ~15 module calls per layer from
Python, and each costs microseconds of dispatch that are not weight bytes (a cProfile of the
bundled model put about a third of a token's time there). decode_layer runs one Llama-family
layer, for a step whose every row is a decode row, as the very same kernels in the very same
order as the module path (rms_norm, the projections' kernels -- lanes_linear, vnni_linear or
the rows kernel's quant_gemv --, rope_inplace, the KV write, paged_decode, silu_mul, the
residual adds), so its results are bit-identical to that path's;
it only stops returning to Python between them. Under tensor parallelism it returns to
Python twice, for the all-reduces of the o and down projections' partial sums.
"""

LAYER = r"""
using RowsKernel = torch::Tensor (*)(torch::Tensor, torch::Tensor, torch::Tensor, torch::Tensor,
                                     int64_t, int64_t, int64_t, bool);

// x [T, hidden]; w: input norm, post-attention norm, then per projection (qkv, o, gate_up,
// down) its three tensors, then the qkv bias (empty: none); ints: per projection (kind,
// bits, group, n_out) -- kind 0: lanes (qweight, scales, mins), 1: the bf16 GEMM (packed,
// -, -; n_out whole panels), 2: the rows kernel (qweight, scales, mins) --, then Hq, Hkv, D,
// sliding window, then the rows kernel's (address of quant_gemv, max_path, int8
// activations); cos, sin [T, D] fp32; kv_cache [2, N, S, Hkv, D]; slots [T] int64;
// block_tables [T, B] int32; seq_lens [T] int32. all_reduce: None, or (tensor parallelism)
// the Python callable that sums the o and down projections' partial outputs over the ranks
// in place (the module path's RowParallel, called at the same two points).
torch::Tensor decode_layer(torch::Tensor x, std::vector<torch::Tensor> w,
                           std::vector<int64_t> ints, double eps, double scale,
                           double soft_cap, torch::Tensor cos, torch::Tensor sin,
                           torch::Tensor kv_cache, torch::Tensor slots,
                           torch::Tensor block_tables, torch::Tensor seq_lens,
                           py::object all_reduce) {
  TORCH_CHECK(w.size() == 15 && ints.size() == 23, "decode_layer: weights and sizes");
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
    if (all_reduce.is_none()) return partial;
    return all_reduce(partial).cast<torch::Tensor>();
  };
  torch::Tensor qkv = proj(rms_norm(x, w[0], eps), 0);
  if (w[14].numel()) qkv = qkv + w[14];
  const int64_t qs = Hq * D, ks = Hkv * D;
  torch::Tensor q = qkv.narrow(1, 0, qs).view({T, Hq, D});
  torch::Tensor k = qkv.narrow(1, qs, ks).view({T, Hkv, D});
  torch::Tensor v = qkv.narrow(1, qs + ks, ks).view({T, Hkv, D});
  rope_inplace(q, k, cos, sin);
  torch::Tensor flat = kv_cache.view({2, -1, Hkv, D});
  flat[0].index_copy_(0, slots, k);
  flat[1].index_copy_(0, slots, v);
  torch::Tensor attn = paged_decode(q.contiguous(), kv_cache[0], kv_cache[1], block_tables,
                                    seq_lens, scale, ints[19], soft_cap, 0);
  x = x + reduced(proj(attn.reshape({T, -1}), 1));
  return x + reduced(proj(silu_mul(proj(rms_norm(x, w[1], eps), 2)), 3));
}
"""
