"""C++ source of the cpu backend's fused decode layer (built with the other native kernels by
native.py, after csrc.py's and lanes_csrc.py's functions, which it calls; decode_layer.py
decides when it runs).

Why: at batch 1 a decode step of a 30-layer model is ~15 module calls per layer from
Python, and each costs microseconds of dispatch that are not weight bytes (a cProfile of the
bundled model put about a third of a token's time there). decode_layer runs one Llama-family
layer, for a step whose every row is a decode row, as the very same kernels in the very same
order as the module path (rms_norm, lanes_linear or vnni_linear, rope_inplace, the KV write,
paged_decode, silu_mul, the residual adds), so its results are bit-identical to that path's;
it only stops returning to Python between them.
"""

LAYER = r"""
// x [T, hidden]; w: input norm, post-attention norm, then (qweight, scales, mins) of qkv, o,
// gate_up and down, or (vnni-packed bf16 weight, -, -), then the qkv bias (empty: none);
// ints: (bits, group, n_out) of the four projections (bits 16: the bf16 GEMM, whose n_out
// is whole panels), then Hq, Hkv, D, sliding window; cos, sin [T, D] fp32; kv_cache
// [2, N, S, Hkv, D]; slots [T] int64; block_tables [T, B] int32; seq_lens [T] int32.
torch::Tensor decode_layer(torch::Tensor x, std::vector<torch::Tensor> w,
                           std::vector<int64_t> ints, double eps, double scale,
                           double soft_cap, torch::Tensor cos, torch::Tensor sin,
                           torch::Tensor kv_cache, torch::Tensor slots,
                           torch::Tensor block_tables, torch::Tensor seq_lens) {
  TORCH_CHECK(w.size() == 15 && ints.size() == 16, "decode_layer: weights and sizes");
  const int64_t T = x.size(0), Hq = ints[12], Hkv = ints[13], D = ints[14];
  auto proj = [&](const torch::Tensor& in, int i) {
    if (ints[3 * i] == 16) return vnni_linear(in.contiguous(), w[2 + 3 * i], false);
    return lanes_linear(in, w[2 + 3 * i], w[3 + 3 * i], w[4 + 3 * i], ints[3 * i],
                        ints[3 * i + 1], ints[3 * i + 2]);
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
                                    seq_lens, scale, ints[15], soft_cap, 0);
  x = x + proj(attn.reshape({T, -1}), 1);
  return x + proj(silu_mul(proj(rms_norm(x, w[1], eps), 2)), 3);
}
"""
