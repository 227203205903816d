"""The cpu backend's oneDNN-packed linear layers equal F.linear, and can be switched off."""

from __future__ import annotations

import pytest
import torch
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
