"""The cpu backend's AVX-512 BF16 GEMM for MoE experts (backends/cpu/gemm_csrc.py) against
its fp32 reference on the same bf16 values, and the MoE layer on it against the oneDNN
layout."""

import pytest
import torch

from quire.backends.cpu import native


def _module():
    if not (native.available() and native.module().bf16_gemm_supported()):
        pytest.skip("this CPU (or build) has no AVX-512 BF16: the experts stay oneDNN's")
    return native.module()


@pytest.mark.parametrize("rows,k,n", [(1, 32, 40), (5, 33, 64), (12, 64, 96), (13, 130, 34),
                                      (30, 512, 200), (70, 96, 32)])
@pytest.mark.parametrize("gated", [False, True])
def test_vnni_linear_matches_fp32_reference(rows, k, n, gated):
    """Row counts across the 12-row tile (1, 12, 13, 30, 70), K odd and even, N off the
    32-column panels; gated: silu(gate) * up rounded as silu_mul rounds it."""
    m = _module()
    g = torch.Generator().manual_seed(rows * 1000 + k)
    x = torch.randn(rows, k, generator=g).bfloat16()
    w = (torch.randn(n, k, generator=g) / k ** 0.5).bfloat16()
    got = m.vnni_linear(x, m.vnni_pack(w, gated), gated).float()
    full = x.float() @ w.float().T
    if gated:
        h = full.bfloat16().float()
        want = torch.nn.functional.silu(h[:, :n // 2]).bfloat16().float() * h[:, n // 2:]
        got = got[:, :n // 2]
        assert got.shape == want.shape
    else:
        want, got = full, got[:, :n]
    # fp32 accumulation in another order, then one bf16 rounding (two for gated).
    torch.testing.assert_close(got, want, atol=2e-2, rtol=1.6e-2)
    packed = m.vnni_pack(w, gated)
    assert packed.shape == ((n // 2 + 15) // 16 if gated else (n + 31) // 32, (k + 1) // 2, 64)


def test_vnni_experts_torch_path_and_native_layer_agree(monkeypatch):
    """With the vnni layout, the one-call native layer and the torch path over the same
    VnniLinear modules give the same answer, and both match the oneDNN layout's."""
    _module()
    from quire.backends.cpu.linear import VnniLinear
    from quire.backends.cpu.moe import CpuMoEExperts
    from quire.backends.torch.models.moe import MoEExperts

    g = torch.Generator().manual_seed(7)
    ref = MoEExperts(5, 48, 40, 2, True, "silu")
    with torch.no_grad():
        ref.w13.copy_(torch.randn(ref.w13.shape, generator=g) / 4)
        ref.w2.copy_(torch.randn(ref.w2.shape, generator=g) / 4)
    ref = ref.to(torch.bfloat16)
    ours = CpuMoEExperts.packed_from(ref)
    assert ours.vnni and isinstance(ours.up[0], VnniLinear)
    monkeypatch.setenv("QUIRE_CPU_BF16_GEMM", "0")
    onednn = CpuMoEExperts.packed_from(ref)
    assert not onednn.vnni
    x = torch.randn(40, 48, generator=g).bfloat16()
    logits = torch.randn(40, 5, generator=g).bfloat16()
    with torch.no_grad():
        native_out = ours(x, logits)
        monkeypatch.setenv("QUIRE_CPU_NATIVE", "0")
        torch_out = ours(x, logits)
        monkeypatch.setenv("QUIRE_CPU_NATIVE", "1")
        want = onednn(x, logits)
    torch.testing.assert_close(native_out.float(), torch_out.float(), atol=2e-2, rtol=2e-2)
    torch.testing.assert_close(native_out.float(), want.float(), atol=3e-2, rtol=3e-2)


@pytest.mark.parametrize("rows", [1, 5, 64, 65, 530])
@pytest.mark.parametrize("bias", [False, True])
@pytest.mark.parametrize("in_features", [96, 97])
def test_dense_vnni_linear_equals_linear(rows, bias, in_features):
    """Dense bf16 layers on quire's GEMM: odd K (padded inside), 200 outputs (off the
    32-column panels), bias, prefill-sized row counts, 3-D input."""
    _module()
    from torch import nn

    from quire.backends.cpu.linear import VnniLinear

    torch.manual_seed(rows)
    linear = nn.Linear(in_features, 200, bias=bias).to(torch.bfloat16)
    layer = VnniLinear(linear.weight, bias=linear.bias)
    x = torch.randn(rows, in_features).bfloat16()
    with torch.no_grad():
        want = x.float() @ linear.weight.float().T + (linear.bias.float() if bias else 0)
        got = layer(x)
        assert got.dtype == torch.bfloat16 and got.shape == (rows, 200)
        torch.testing.assert_close(got.float(), want, atol=3e-2, rtol=1.6e-2)
        assert torch.equal(layer(x.reshape(1, rows, in_features)), got.reshape(1, rows, 200))


def test_pack_linears_picks_the_bf16_gemm_and_the_switch(monkeypatch):
    _module()
    from torch import nn

    from quire.backends.cpu.linear import PackedLinear, VnniLinear, pack_linears

    model = nn.Sequential(nn.Linear(64, 64), nn.Linear(64, 32, bias=False)).to(torch.bfloat16)
    other = nn.Sequential(nn.Linear(64, 64), nn.Linear(64, 32, bias=False)).to(torch.bfloat16)
    other.load_state_dict(model.state_dict())
    x = torch.randn(3, 64).bfloat16()
    with torch.no_grad():
        assert pack_linears(model) == 2
        assert all(isinstance(m, VnniLinear) for m in model)
        monkeypatch.setenv("QUIRE_CPU_BF16_GEMM", "0")
        assert pack_linears(other) == 2
        assert all(isinstance(m, PackedLinear) for m in other)
        torch.testing.assert_close(model(x).float(), other(x).float(), atol=3e-2, rtol=3e-2)


@pytest.mark.parametrize("rows", [1, 7, 31, 32, 70])
@pytest.mark.parametrize("fp32_copy", [False, True])
def test_bf16_head_on_the_gemm(rows, fp32_copy, monkeypatch):
    """The output head in bf16: quire's GEMM below FP32_ROWS (and above when no fp32 copy is
    taken), the fp32 copy from FP32_ROWS up when it is; F.linear's answer either way."""
    _module()
    from torch import nn

    from quire.backends.cpu import linear as linear_mod

    monkeypatch.setattr(linear_mod, "_faster_in_fp32", lambda *args: fp32_copy)
    torch.manual_seed(rows)
    lin = nn.Linear(64, 300).to(torch.bfloat16)
    head = linear_mod.PackedHead(lin)
    assert head.vnni is not None and head.packed is None
    assert (head.packed32 is not None) == fp32_copy
    x = torch.randn(rows, 64).bfloat16()
    with torch.no_grad():
        out = head(x)
    assert out.dtype == torch.bfloat16 and out.shape == (rows, 300)
    want = x.float() @ lin.weight.float().T + lin.bias.float()
    torch.testing.assert_close(out.float(), want, atol=3e-2, rtol=1.6e-2)
