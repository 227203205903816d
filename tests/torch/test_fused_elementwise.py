"""The cpu backend's fused RMSNorm / SiLU-and-multiply / rotary layers equal the torch
modules they replace, and fall back to them for shapes the kernels don't take."""

from __future__ import annotations

import pytest
import torch

from quire.backends.cpu import native
from quire.backends.cpu.fused import (
    NativeApplyRotary,
    NativeRMSNorm,
    NativeSiluAndMul,
    fuse_elementwise,
)
from quire.backends.torch.models.llama import RMSNorm, SiluAndMul
from quire.backends.torch.rope import ApplyRotary, RotaryEmbedding
from quire.models.rope import rope_spec

pytestmark = pytest.mark.skipif(not native.available(),
                                reason="native kernels could not be built here")
TOL = {torch.float32: 2e-6, torch.bfloat16: 1e-2}


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_rms_norm(dtype):
    torch.manual_seed(0)
    ref = RMSNorm(96, 1e-6)
    ref.weight.data = torch.randn(96)
    ref = ref.to(dtype)
    fused = NativeRMSNorm(96, 1e-6)
    fused.weight = ref.weight
    x = torch.randn(7, 200).to(dtype)[:, 50:146]  # strided rows
    torch.testing.assert_close(fused(x).float(), ref(x).float(), atol=TOL[dtype],
                               rtol=TOL[dtype])
    x3 = torch.randn(5, 3, 96).to(dtype)  # [T, H, D] (q/k norm): the torch fallback
    torch.testing.assert_close(fused(x3), ref(x3))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_silu_mul(dtype):
    x = (torch.randn(9, 2 * 80) * 4).to(dtype)
    torch.testing.assert_close(NativeSiluAndMul()(x).float(), SiluAndMul()(x).float(),
                               atol=TOL[dtype], rtol=TOL[dtype])


def test_silu_mul_vector_lanes_equal_the_scalar_tail():
    # bf16 rows go 16 at a time (AVX-512 BF16) with the tail one by one: the same pairs at a
    # vector position and at the tail give the same bits.
    g = torch.Generator().manual_seed(1)
    gate = (torch.randn(5000, generator=g) * 6).bfloat16()
    up = torch.randn(5000, generator=g).bfloat16()
    x = torch.zeros(5000, 2 * 17, dtype=torch.bfloat16)
    x[:, 3], x[:, 16], x[:, 17 + 3], x[:, 17 + 16] = gate, gate, up, up
    y = native.module().silu_mul(x)
    assert torch.equal(y[:, 3], y[:, 16])
    torch.testing.assert_close(y[:, 3].float(), SiluAndMul()(x)[:, 3].float(), atol=1e-2,
                               rtol=1e-2)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_rotary_in_place_on_qkv_views(dtype):
    rope = RotaryEmbedding(rope_spec(64, 10000.0, {}), 128)
    positions = torch.tensor([0, 5, 17, 127])
    cos, sin = rope.table(positions)
    qkv = torch.randn(4, (6 + 2 * 2) * 64).to(dtype)
    q_ref, k_ref = ApplyRotary()(qkv[:, :384].view(4, 6, 64), qkv[:, 384:512].view(4, 2, 64),
                                 cos, sin)
    q, k = qkv[:, :384].view(4, 6, 64), qkv[:, 384:512].view(4, 2, 64)
    q_out, k_out = NativeApplyRotary()(q, k, cos, sin)
    assert q_out.data_ptr() == qkv.data_ptr()  # rotated in place
    torch.testing.assert_close(q_out.float(), q_ref.float(), atol=TOL[dtype] * 4,
                               rtol=TOL[dtype])
    torch.testing.assert_close(k_out.float(), k_ref.float(), atol=TOL[dtype] * 4,
                               rtol=TOL[dtype])


def test_fuse_elementwise_swaps_modules(llama_dir):
    from quire import LLM

    llm = LLM(llama_dir, dtype="float32", block_size=16, num_blocks=16)
    layer = llm.engine.executor.model.layers[0]
    assert isinstance(layer.input_layernorm, NativeRMSNorm)
    assert isinstance(layer.act, NativeSiluAndMul)
    assert isinstance(layer.rotary, NativeApplyRotary)
    assert fuse_elementwise(layer) == 0  # already fused: nothing left to swap


def test_argmax_rows_matches_torch():
    """The greedy sampler's native argmax: first maximum on ties, NaN as the maximum, rows of
    -inf, widths off the vector size, strided rows, bf16 through the torch fallback."""
    g = torch.Generator().manual_seed(0)
    for width in (1, 15, 16, 33, 32000):
        x = torch.randn(9, width, generator=g)
        x[1] = -float("inf")
        x[2, width // 2:] = x[2].max() + 1  # ties: the first one wins
        x[3, width - 1] = float("nan")
        x[4, 0] = float("nan")
        assert torch.equal(native.argmax(x), x.argmax(dim=-1)), width
    wide = torch.randn(5, 100, generator=g)
    assert torch.equal(native.argmax(wide[:, 10:90]), wide[:, 10:90].argmax(dim=-1))
    half = torch.randn(3, 50, generator=g).to(torch.bfloat16)
    assert torch.equal(native.argmax(half), half.argmax(dim=-1))
