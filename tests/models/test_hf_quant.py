"""GPTQ and AWQ tensors -> PackedWeight: exactly the formats' own dequantization formula
(act-order, 4 and 8 bits, every group size, symmetric and not), close to the weights they
were written from, and clear errors for what quire cannot read."""

from __future__ import annotations

import numpy as np
import pytest

from quire.models import hf_quant
from quire.models.quant import concat_rows


def _weight(n: int, k: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((n, k)).astype(np.float32) * 0.05


@pytest.mark.parametrize("bits,group,desc_act,sym", [
    (4, 128, False, True), (4, 32, True, True), (4, 64, False, False), (4, -1, True, False),
    (8, 128, True, True), (8, 32, False, False)])
def test_gptq_matches_its_formula(bits, group, desc_act, sym):
    w = _weight(48, 256)
    parts = hf_quant.quantize_gptq(w, bits, group, desc_act, sym, seed=1)
    qc = {"quant_method": "gptq", "bits": bits, "group_size": group}
    assert parts["qweight"].dtype == np.int32 and parts["qweight"].shape == (256 * bits // 32, 48)
    assert parts["qzeros"].shape == (256 // (group if group > 0 else 256), 48 * bits // 32)
    packed = hf_quant.unpack("gptq", parts, qc)
    want = hf_quant.dequantize_reference("gptq", parts, qc)
    np.testing.assert_array_equal(packed.dequantize(), want)
    assert (packed.perm is not None) == (desc_act and group > 0)  # one group: no order
    step = np.abs(w).max() * 2 / (2 ** bits - 1)  # the coarsest quantization step
    assert np.abs(want - w).max() <= step
    if packed.perm is not None:  # the kernels' view: inputs gathered in stored order
        np.testing.assert_array_equal(packed.dequantize(stored_order=True),
                                      want[:, packed.perm])


@pytest.mark.parametrize("group", [32, 128, -1])
def test_awq_matches_its_formula(group):
    w = _weight(64, 128, seed=2)
    parts = hf_quant.quantize_awq(w, group)
    qc = {"quant_method": "awq", "bits": 4, "group_size": group}
    assert parts["qweight"].shape == (128, 64 // 8)
    packed = hf_quant.unpack("awq", parts, qc)
    want = hf_quant.dequantize_reference("awq", parts, qc)
    np.testing.assert_array_equal(packed.dequantize(), want)
    assert np.abs(want - w).max() <= (w.max() - w.min()) / 15


def test_awq_nibble_order_is_the_specifications():
    """Output 8c + ORDER[i] sits in nibble i of word c: a single 1 in output 1 lands in
    nibble 4 (ORDER = 0, 2, 4, 6, 1, 3, 5, 7)."""
    q = np.zeros((1, 8), np.uint32)
    q[0, 1] = 1
    assert hf_quant._pack_awq(q)[0, 0] == 1 << 16
    np.testing.assert_array_equal(hf_quant._unpack_awq(hf_quant._pack_awq(q)), q)


def test_merge_groups_each_layers_parts_and_passes_the_rest():
    qc = {"quant_method": "gptq", "bits": 4, "group_size": 32}
    a, b = (hf_quant.quantize_gptq(_weight(32, 64, s), 4, 32, True, seed=7) for s in (3, 4))
    stream = [("x.norm.weight", np.ones(4))] + \
        [(f"l.q_proj.{k}", v) for k, v in a.items()] + [(f"l.k_proj.{k}", v) for k, v in b.items()]
    out = dict(hf_quant.merge_quantized(stream, qc))
    assert sorted(out) == ["l.k_proj.weight", "l.q_proj.weight", "x.norm.weight"]
    # q and k quantized with the same act-order (one input, one Hessian) fuse packed
    fused = concat_rows([out["l.q_proj.weight"], out["l.k_proj.weight"]])
    np.testing.assert_array_equal(fused.dequantize(), np.concatenate(
        [hf_quant.dequantize_reference("gptq", p, qc) for p in (a, b)]))
    other = hf_quant.unpack("gptq", hf_quant.quantize_gptq(_weight(32, 64), 4, 32, True, seed=8),
                            qc)
    with pytest.raises(ValueError, match="cannot fuse"):
        concat_rows([out["l.q_proj.weight"], other])  # different orders: the caller dequantizes
    with pytest.raises(ValueError, match="lacks g_idx"):
        list(hf_quant.merge_quantized([(f"l.q_proj.{k}", v) for k, v in a.items()
                                       if k != "g_idx"], qc))


def test_unsupported_variants_say_what_is_supported():
    def qm(**qc):
        return hf_quant.quant_method({"quantization_config": qc})

    assert qm(quant_method="bitsandbytes") is None
    assert qm(quant_method="gptq", bits=4)["bits"] == 4
    with pytest.raises(ValueError, match="GPTQ with 3 bits"):
        qm(quant_method="gptq", bits=3)
    with pytest.raises(ValueError, match="AWQ version 'gemv'"):
        qm(quant_method="awq", version="gemv")
    with pytest.raises(ValueError, match="checkpoint_format 'gptq_v2'"):
        qm(quant_method="gptq", checkpoint_format="gptq_v2")
    parts = hf_quant.quantize_gptq(_weight(32, 48), 4, 16)  # groups of 16 inputs
    with pytest.raises(ValueError, match="not a multiple of 32"):
        hf_quant.unpack("gptq", parts, {"bits": 4, "group_size": 16})
    with pytest.raises(ValueError, match="does not match the checkpoint, which is GPTQ"):
        hf_quant.check_requested("awq", {"quant_method": "gptq"})
    with pytest.raises(ValueError, match="not GPTQ or AWQ"):
        hf_quant.check_requested("gptq", None)
    hf_quant.check_requested("none", {"quant_method": "awq"})  # dense: fine
