"""The cpu backend's packed-weight kernel against the dequantized reference: every format,
row counts on both sides of the fused/GEMM switch, odd output sizes, fp32 and bf16."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from quire.backends.cpu import quant_native
from quire.backends.torch.quantization import (
    PackedLinearMethod,
    QuantEmbedding,
    QuantLinear,
    TorchQuantKernel,
)
from quire.models import quant

gguf_quants = pytest.importorskip("gguf.quants")
from gguf.constants import GGMLQuantizationType as T  # noqa: E402


def test_kernel_builds_here():
    # CI machines have the toolchain: a build failure is a failure, not a skip.
    assert quant_native.available()


K_QUANTS = (T.Q4_K, T.Q5_K, T.Q6_K)


def packed(qtype, n, k, seed=0):
    if qtype in K_QUANTS:  # (the gguf package cannot quantize these: random blocks)
        from tests.models.test_quant import _random_k_blocks

        return quant.from_gguf(_random_k_blocks(qtype, n, k, seed), int(qtype), (n, k))
    rng = np.random.default_rng(seed)
    w = (rng.standard_normal((n, k)) * rng.uniform(0.05, 2, size=(n, 1))).astype(np.float32)
    return quant.from_gguf(gguf_quants.quantize(w, qtype), int(qtype), (n, k))


def layer_for(pw, kernel):
    method = PackedLinearMethod(kernel)
    layer = QuantLinear(pw.shape[1], pw.shape[0], method)
    method.load_weights(layer, pw)
    return layer


@pytest.mark.parametrize("qtype", [T.Q4_0, T.Q4_1, T.Q5_0, T.Q5_1, T.Q8_0, *K_QUANTS])
@pytest.mark.parametrize("n, k", [(33, 256), (64, 512), (7, 768)])
@pytest.mark.parametrize("rows", [1, 3, 16, 17, 40])
def test_kernel_equals_dequantized_reference(qtype, n, k, rows):
    pw = packed(qtype, n, k, seed=rows)
    ref_w = torch.from_numpy(pw.dequantize())
    x = torch.randn(rows, k)
    want = x @ ref_w.T
    # The default and the portable paths compute in float: equal up to rounding.
    layer = layer_for(pw, quant_native.CpuQuantKernel())
    portable = layer_for(pw, quant_native.CpuQuantKernel(portable=True))
    scale = want.abs().max()  # (K-quant test weights are large: compare relative to them)
    torch.testing.assert_close(layer(x) / scale, want / scale, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(portable(x) / scale, want / scale, rtol=1e-4, atol=1e-5)
    avx2 = layer_for(pw, quant_native.CpuQuantKernel(isa="avx2"))  # below this CPU's best
    torch.testing.assert_close(avx2(x) / scale, want / scale, rtol=1e-4, atol=1e-5)
    # 8-bit activations (per group of 32): each input is off by at most half a step,
    # max|x over its group| / 254, so an output is off by at most the sum over groups of
    # that times the group's sum of |w|.
    # (K-quants, with float32 scales, keep float activations.)
    int8 = layer_for(pw, quant_native.CpuQuantKernel(int8_activations=True))
    xmax = x.abs().reshape(rows, k // 32, 32).amax(-1)
    wsum = ref_w.abs().reshape(n, k // 32, 32).sum(-1)
    bound = xmax @ wsum.T / 254 * 1.01 + 1e-4
    assert ((int8(x) - want).abs() <= bound).all()
    torch.testing.assert_close(quant_native.CpuQuantKernel().dequantize(layer), ref_w)
    # The portable kernel (any torch device) agrees too.
    torch.testing.assert_close(layer_for(pw, TorchQuantKernel())(x) / scale, want / scale,
                               rtol=1e-4, atol=1e-5)
    xb = x.bfloat16()
    got = layer(xb)
    assert got.dtype == torch.bfloat16
    torch.testing.assert_close(got.float() / scale, (xb.float() @ ref_w.T) / scale,
                               rtol=2e-2, atol=2e-2)
    # Half-precision rows are widened and the result narrowed inside the kernel: the same
    # bits as the float32 call rounded by torch.
    for half in (torch.bfloat16, torch.float16):
        xh = x.to(half)
        assert torch.equal(layer(xh), layer(xh.float()).to(half))


@pytest.mark.parametrize("qtype", [T.Q4_1, T.Q8_0, T.Q6_K, T.Q4_K])
def test_embedding_rows_dequantize_exactly(qtype):
    pw = packed(qtype, 50, 256)
    emb = QuantEmbedding(layer_for(pw, quant_native.CpuQuantKernel()))
    ids = torch.tensor([3, 0, 49, 3])
    torch.testing.assert_close(emb(ids), torch.from_numpy(pw.dequantize())[ids])


def test_isa_is_reported():
    assert quant_native.isa() in ("avx512", "avx2", "portable")
