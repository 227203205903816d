"""The lanes layout of the cpu backend's packed-weight kernel (quant_lanes.py,
lanes_csrc.py): repacking is exact, the kernel matches the dequantized reference for every
format the layout takes, each row's result does not depend on the other rows of the call,
and the kernel's prepare() picks the layout only where it runs."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from quire.backends.cpu import native, quant_lanes, quant_native
from quire.backends.torch.quantization import PackedLinearMethod, QuantEmbedding, QuantLinear
from quire.models import hf_quant, quant

from .test_quant_kernel import K_QUANTS, T, packed

LANES = native.available() and native.module().lanes_supported()
needs_lanes = pytest.mark.skipif(not LANES, reason="this CPU has no AVX-512 BF16 (the lanes "
                                 "kernel's instruction set); test_rows_layout_elsewhere runs")
FORMATS = [T.Q4_0, T.Q4_1, T.Q5_1, T.Q8_0, *K_QUANTS]


def prepared(pw, kernel=None):
    method = PackedLinearMethod(kernel or quant_native.CpuQuantKernel())
    layer = QuantLinear(pw.shape[1], pw.shape[0], method)
    method.load_weights(layer, pw)
    method.process_after_loading(layer)
    return layer


def unpack_in_python(layer):
    """The lanes layout read back with numpy (independent of the C++ reader)."""
    n, k, g = layer.out_features, layer.in_features, layer.group_size
    tiles = layer.scales.shape[0]
    raw = layer.qweight.numpy().reshape(-1)
    if layer.bits == 4:
        words = raw.view(np.uint16).reshape(tiles, k // 8, 16, 2)
        v = np.stack([(words >> (4 * i)) & 0xF for i in range(4)], axis=-1)  # [T, b, o, p, v]
        q = v.transpose(0, 2, 1, 4, 3).reshape(tiles * 16, k)
    else:
        q = raw.view(np.int8).reshape(tiles, k // 2, 16, 2).transpose(0, 2, 1, 3)
    w = q.reshape(-1, k // g, g).astype(np.float32) * \
        layer.scales.float().transpose(1, 2).reshape(tiles * 16, -1).numpy()[:, :, None]
    if layer.mins.numel():
        w += layer.mins.float().transpose(1, 2).reshape(tiles * 16, -1).numpy()[:, :, None]
    return w.reshape(-1, k)[:n]


@needs_lanes
@pytest.mark.parametrize("qtype", FORMATS)
@pytest.mark.parametrize("n, k", [(33, 256), (64, 512), (7, 768)])
def test_repack_is_exact(qtype, n, k):
    pw = packed(qtype, n, k, seed=n)
    layer = prepared(pw)
    assert layer.layout == quant_lanes.LAYOUT
    ref = pw.dequantize()
    np.testing.assert_array_equal(unpack_in_python(layer), ref)
    torch.testing.assert_close(quant_native.CpuQuantKernel().dequantize(layer),
                               torch.from_numpy(ref), rtol=0, atol=0)
    # Same size as the checkpoint's layout, up to the padding of N to whole tiles.
    assert layer.qweight.numel() == -(-n // 16) * 16 * k * pw.bits // 8


@needs_lanes
@pytest.mark.parametrize("qtype", FORMATS)
@pytest.mark.parametrize("n, k", [(33, 256), (7, 768), (100, 512)])
@pytest.mark.parametrize("rows", [1, 2, 3, 5, 9, 32, 33])
def test_kernel_equals_dequantized_reference(qtype, n, k, rows):
    pw = packed(qtype, n, k, seed=rows)
    layer = prepared(pw)
    ref = torch.from_numpy(pw.dequantize()).double()
    x = torch.randn(rows, k)
    scale = (x.double() @ ref.T).abs().max()
    # float32 rows (two bf16 parts, x - hi - lo within 2^-17 of |x|): each product within
    # ~2^-16 of |x w|, plus float32 summation noise; so bounded by the sum of |x w| (the
    # outputs themselves may cancel far below it).
    got = layer(x)
    assert got.dtype == torch.float32
    magnitude = x.double().abs() @ ref.abs().T
    assert ((got.double() - x.double() @ ref.T).abs() <= 2.0 ** -14 * magnitude).all()
    # bf16 rows: exact products, fp32 sums, one rounding to bf16 at the end.
    xb = x.bfloat16()
    want = xb.double() @ ref.T
    got = layer(xb)
    assert got.dtype == torch.bfloat16
    err = (got.double() - want).abs()
    assert (err <= want.abs() * 2.0 ** -8 + scale * 1e-5).all()
    # float16 rows go through float32.
    xh = x.half()
    assert torch.equal(layer(xh), layer(xh.float()).half())


@needs_lanes
@pytest.mark.parametrize("qtype", [T.Q4_1, T.Q8_0, T.Q4_K])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
@pytest.mark.parametrize("n", [80, 600])
def test_rows_do_not_depend_on_the_call(qtype, dtype, n):
    # What keeps speculation on equal to off: a row's logits are the same bits whether it
    # is verified with draft rows or decoded alone.
    # Past 12 rows (7 for 8-bit) the kernel unpacks each tile once into a scratch buffer
    # (prefill chunks, large batches): the same values, so the same bits. Below, calls of
    # more than 4 rows take chunks of tiles in turn (n=600: several chunks per thread).
    layer = prepared(packed(qtype, n, 512))
    x = torch.randn(70, 512).to(dtype)
    together = layer(x)
    for i in (0, 3, 4, 7, 33, 69):
        assert torch.equal(layer(x[i:i + 1]), together[i:i + 1])
    for lo, hi in ((5, 12), (8, 12), (3, 19), (20, 27), (40, 46)):
        assert torch.equal(layer(x[lo:hi]), together[lo:hi])


@needs_lanes
@pytest.mark.parametrize("method, bits, group", [("gptq", 4, 128), ("gptq", 4, 32),
                                                 ("gptq", 8, 64), ("awq", 4, 64)])
def test_hf_formats(method, bits, group):
    w = np.random.default_rng(group).standard_normal((72, 384)).astype(np.float32) * 0.05
    qc = {"quant_method": method, "bits": bits, "group_size": group}
    parts = hf_quant.quantize_gptq(w, bits, group, True, False) if method == "gptq" \
        else hf_quant.quantize_awq(w, group)
    m = PackedLinearMethod(quant_native.CpuQuantKernel())
    layer = QuantLinear(384, 72, m)
    m.load_weights(layer, hf_quant.unpack(method, parts, qc))
    m.process_after_loading(layer)
    assert layer.layout == quant_lanes.LAYOUT
    want_w = torch.from_numpy(hf_quant.dequantize_reference(method, parts, qc))
    x = torch.randn(5, 384)
    torch.testing.assert_close(layer(x), x @ want_w.T, rtol=1e-4, atol=1e-4)


@needs_lanes
def test_embedding_rows_of_a_repacked_table():
    pw = packed(T.Q8_0, 50, 256)
    layer = prepared(pw)
    assert layer.layout == quant_lanes.LAYOUT
    ids = torch.tensor([3, 0, 49, 3])
    torch.testing.assert_close(QuantEmbedding(layer)(ids),
                               torch.from_numpy(pw.dequantize())[ids], rtol=0, atol=0)


def test_rows_layout_elsewhere(monkeypatch):
    # The switch, the narrower paths the tests pin, and the 8-bit-activation variant keep the
    # checkpoint's layout; so does every layer on a CPU without AVX-512 BF16.
    pw = packed(T.Q4_1, 48, 256)
    for kernel in (quant_native.CpuQuantKernel(isa="avx2"),
                   quant_native.CpuQuantKernel(int8_activations=True)):
        assert prepared(pw, kernel).layout == ""
    monkeypatch.setenv("QUIRE_CPU_QUANT_LANES", "0")
    assert prepared(pw).layout == ""
    monkeypatch.delenv("QUIRE_CPU_QUANT_LANES")
    assert prepared(pw).layout == (quant_lanes.LAYOUT if LANES else "")


def test_layouts_it_does_not_take():
    # 4-bit groups must be whole 8-input loads; a format the layout cannot hold stays put.
    pw = quant.PackedWeight(4, 4, np.zeros((16, 4), np.uint8), np.ones((16, 2), np.float16),
                            None, (16, 8), "test")
    method = PackedLinearMethod(quant_native.CpuQuantKernel())
    layer = QuantLinear(8, 16, method)
    method.load_weights(layer, pw)
    assert not quant_lanes.supported(layer)


@needs_lanes
@pytest.mark.parametrize("qtype", FORMATS)
def test_transposed_dequantize_and_many_rows(qtype):
    # The whole weight read back transposed (QuantKernel.dequantize), exact; and a call of
    # many rows (a prefill chunk) against the dequantized reference.
    pw = packed(qtype, 50, 512)
    layer = prepared(pw)
    wt = quant_lanes.dequantize_t(layer)
    assert wt.shape == (512, 50)
    np.testing.assert_array_equal(wt.t().numpy(), pw.dequantize())
    x = torch.randn(103, 512)
    want = x.double() @ torch.from_numpy(pw.dequantize()).double().T
    scale = want.abs().max()  # float32 rows as two bf16 parts: float summation noise
    torch.testing.assert_close(layer(x).double() / scale, want / scale, rtol=0, atol=2e-5)
