"""The cpu backend's oneDNN-packed linear layers equal F.linear, and can be switched off."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from quire.backends.cpu.linear import PackedLinear, onednn_available, pack_linears


@pytest.mark.parametrize("dtype,tol", [(torch.float32, 1e-4), (torch.bfloat16, 3e-2)])
@pytest.mark.parametrize("rows", [1, 5, 64, 65, 530])
@pytest.mark.parametrize("bias", [False, True])
def test_packed_equals_linear(dtype, tol, rows, bias):
    if not onednn_available(dtype):
        pytest.skip("this torch build has no oneDNN packed linear (F.linear is used)")
    torch.manual_seed(0)
    linear = nn.Linear(96, 200, bias=bias).to(dtype)
    x = torch.randn(rows, 96).to(dtype)
    with torch.no_grad():
        torch.testing.assert_close(PackedLinear(linear)(x).float(), linear(x).float(),
                                   atol=tol, rtol=tol)


def test_pack_linears_swaps_every_linear_and_keeps_ties():
    if not onednn_available(torch.float32):
        pytest.skip("this torch build has no oneDNN packed linear (F.linear is used)")
    model = nn.Sequential(nn.Linear(8, 8), nn.ReLU(), nn.Sequential(nn.Linear(8, 4)))
    x = torch.randn(3, 8)
    with torch.no_grad():
        want = model(x)
        assert pack_linears(model) == 2
        got = model(x)
    assert not any(isinstance(m, nn.Linear) for m in model.modules())
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)


def test_switched_off_by_env(monkeypatch):
    monkeypatch.setenv("QUIRE_CPU_ONEDNN", "0")
    onednn_available.cache_clear()
    try:
        model = nn.Sequential(nn.Linear(8, 8))
        assert pack_linears(model) == 0
        assert isinstance(model[0], nn.Linear)
    finally:
        onednn_available.cache_clear()


def test_row_buckets_bound_the_shapes():
    from quire.backends.cpu.linear import padded_rows

    assert [padded_rows(n) for n in (1, 37, 64)] == [1, 37, 64]
    assert [padded_rows(n) for n in (65, 80, 81, 512, 513, 2048)] == [80, 80, 96, 512, 576, 2048]
    assert len({padded_rows(n) for n in range(1, 2049)}) == 64 + 28 + 24


@pytest.mark.parametrize("rows", [1, 31, 32, 64, 70])
def test_packed_head_fp32_copy_matches_linear(rows, monkeypatch):
    """The output head's fp32 copy (taken from FP32_ROWS rows up where it measured faster;
    forced here) gives F.linear's answer in x's dtype, padded row counts included."""
    from quire.backends.cpu import linear as linear_mod

    if not onednn_available(torch.bfloat16):
        pytest.skip("oneDNN bf16 unavailable here")
    monkeypatch.setattr(linear_mod, "_faster_in_fp32", lambda *args: True)
    torch.manual_seed(rows)
    lin = nn.Linear(64, 300).to(torch.bfloat16)
    head = linear_mod.PackedHead(lin)
    assert head.packed32 is not None
    x = torch.randn(rows, 64).to(torch.bfloat16)
    out = head(x)
    assert out.dtype == torch.bfloat16 and out.shape == (rows, 300)
    want = F.linear(x.float(), lin.weight.float(), lin.bias.float())
    torch.testing.assert_close(out.float(), want, atol=3e-2, rtol=1e-2)


def test_pack_head_finds_the_head_behind_a_wrapper():
    from quire.backends.cpu.linear import PackedHead, pack_head

    if not onednn_available(torch.float32):
        pytest.skip("oneDNN unavailable here")

    class Wrapper(nn.Module):
        def __init__(self, inner):
            super().__init__()
            self.inner = inner

    model = nn.Module()
    model.lm_head = Wrapper(nn.Linear(16, 40))
    assert pack_head(model) and isinstance(model.lm_head.inner, PackedHead)
    assert model.lm_head.inner.packed32 is None  # fp32 weights: no copy
    assert not pack_head(nn.Module())
