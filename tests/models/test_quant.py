"""GGUF block formats repacked into quire's PackedWeight layout: dequantizing the repacked
weight equals the gguf package's own dequantization exactly."""

from __future__ import annotations

import numpy as np
import pytest

from quire.models import quant

gguf_quants = pytest.importorskip("gguf.quants")
from gguf.constants import GGMLQuantizationType as T  # noqa: E402


@pytest.mark.parametrize("qtype", [T.Q8_0, T.Q4_0, T.Q4_1, T.Q5_0, T.Q5_1])
@pytest.mark.parametrize("shape", [(3, 32), (17, 96), (64, 256)])
def test_repack_equals_gguf_dequantize(qtype, shape):
    rng = np.random.default_rng(int(qtype) * 100 + shape[0])
    w = (rng.standard_normal(shape) * rng.uniform(0.01, 3, size=(shape[0], 1))).astype(np.float32)
    raw = gguf_quants.quantize(w, qtype)
    want = gguf_quants.dequantize(raw, qtype).reshape(shape)
    packed = quant.from_gguf(raw, int(qtype), shape)
    assert packed is not None and packed.source == qtype.name
    np.testing.assert_array_equal(packed.dequantize(), want)
    # Q4_0 gains a stored min (20 bytes a block for 18); Q5 values are held in bytes.
    assert packed.nbytes <= raw.nbytes * (1.12 if packed.bits == 4 else 1.6)
    # Rows taken in another order stay exact (llama's q/k rows are permuted at load).
    order = rng.permutation(shape[0])
    np.testing.assert_array_equal(packed.rows(order).dequantize(), want[order])


def test_concat_rows_and_unsupported_types():
    rng = np.random.default_rng(0)
    a, b = (rng.standard_normal((4, 64)).astype(np.float32) for _ in range(2))
    pa = quant.from_gguf(gguf_quants.quantize(a, T.Q4_1), int(T.Q4_1), (4, 64))
    pb = quant.from_gguf(gguf_quants.quantize(b, T.Q4_1), int(T.Q4_1), (4, 64))
    both = quant.concat_rows([pa, pb])
    np.testing.assert_array_equal(both.dequantize(), np.concatenate([pa.dequantize(),
                                                                     pb.dequantize()]))
    p8 = quant.from_gguf(gguf_quants.quantize(a, T.Q8_0), int(T.Q8_0), (4, 64))
    with pytest.raises(ValueError, match="cannot fuse"):
        quant.concat_rows([pa, p8])
    assert quant.from_gguf(np.zeros(84, np.uint8), int(T.Q2_K), (1, 256)) is None


def _random_k_blocks(qtype, n, k, seed):
    """Random K-quant blocks (every byte pattern is a valid block) with sane float16 scales."""
    from gguf.constants import GGML_QUANT_SIZES

    rng = np.random.default_rng(seed)
    size = GGML_QUANT_SIZES[qtype][1]
    raw = rng.integers(0, 256, size=(n, k // 256, size), dtype=np.uint8)
    halves = rng.uniform(0.001, 0.05, size=(n, k // 256, 2)).astype(np.float16).view(np.uint8)
    if qtype == T.Q6_K:
        raw[..., 208:210] = halves[..., :2]
    else:
        raw[..., 0:4] = halves
    return raw.reshape(n, -1)


@pytest.mark.parametrize("qtype", [T.Q4_K, T.Q5_K, T.Q6_K])
@pytest.mark.parametrize("shape", [(3, 256), (5, 768)])
def test_k_quants_repack_equals_gguf_dequantize(qtype, shape):
    raw = _random_k_blocks(qtype, *shape, seed=int(qtype))
    want = gguf_quants.dequantize(raw, qtype).reshape(shape)
    packed = quant.from_gguf(raw, int(qtype), shape)
    assert packed is not None and packed.source == qtype.name
    np.testing.assert_allclose(packed.dequantize(), want, rtol=1e-6, atol=1e-7)
