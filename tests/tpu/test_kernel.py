"""quire's Pallas ragged paged attention against the jnp reference, in the TPU
interpreter, over block sizes 16-128, head sizes 64-256, GQA ratios, ragged mixes of
prefill / chunked prefill / decode, fp32 and bf16, windows and soft-caps."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.experimental.pallas import tpu as pltpu

from quire.backends.tpu.kernel import KernelParams, ragged_paged_attention
from quire.backends.tpu.metadata import build_metadata
from quire.backends.tpu.reference import paged_attention, write_kv

CASES = [
    # seq_lens, query_lens, Hq, Hkv, D, page, query_block, pages_per_block, dtype, window, cap
    ([9], [9], 4, 4, 64, 16, 8, 1, "float32", None, None),
    ([40, 1, 17], [1, 1, 1], 8, 2, 64, 16, 8, 2, "float32", None, None),
    ([50, 20, 7], [10, 1, 7], 8, 1, 128, 32, 4, 2, "bfloat16", None, None),
    ([70, 33], [1, 33], 6, 2, 80, 64, 16, 1, "float32", None, 30.0),
    ([23, 5, 12], [3, 5, 12], 2, 2, 96, 16, 8, 4, "bfloat16", 8, None),
    ([300], [1], 4, 1, 256, 128, 8, 2, "float32", None, None),
    ([130, 64], [40, 64], 9, 3, 64, 32, 8, 3, "float32", 50, None),
]


def _case(seq_lens, query_lens, hq, hkv, d, page, dtype, padded_tokens=3, seed=0):
    rng = np.random.default_rng(seed)
    max_pages = max(-(-s // page) for s in seq_lens)
    num_blocks = 1 + len(seq_lens) * max_pages
    tables = (rng.permutation(num_blocks - 1) + 1).reshape(len(seq_lens), -1).astype(np.int32)
    kc = jnp.asarray(rng.standard_normal((hkv, num_blocks, page, d)), dtype)
    vc = jnp.asarray(rng.standard_normal((hkv, num_blocks, page, d)), dtype)
    num_tokens = sum(query_lens) + padded_tokens
    q = jnp.asarray(rng.standard_normal((num_tokens, hq, d)), dtype)
    qsl = np.concatenate([[0], np.cumsum(query_lens)]).astype(np.int32)
    return q, kc, vc, tables, qsl, np.asarray(seq_lens, np.int32)


@pytest.mark.parametrize("seq_lens,query_lens,hq,hkv,d,page,qb,ppb,dtype,window,cap", CASES)
def test_kernel_matches_reference(seq_lens, query_lens, hq, hkv, d, page, qb, ppb, dtype,
                                  window, cap):
    q, kc, vc, tables, qsl, lens = _case(seq_lens, query_lens, hq, hkv, d, page, dtype)
    md = build_metadata(qsl, lens, tables, np.zeros(q.shape[0], np.int32), qb)
    params = KernelParams(query_block=qb, pages_per_block=ppb)
    got = ragged_paged_attention(q, kc, vc, jax.tree.map(jnp.asarray, md), scale=d**-0.5,
                                 sliding_window=window, soft_cap=cap, params=params,
                                 interpret=pltpu.InterpretParams())
    want = paged_attention(q, kc, vc, jnp.asarray(tables), jnp.asarray(qsl), jnp.asarray(lens),
                           d**-0.5, window, cap)
    real = int(qsl[-1])
    tol = 2e-5 if dtype == "float32" else 3e-2
    np.testing.assert_allclose(np.asarray(got[:real], np.float32),
                               np.asarray(want[:real], np.float32), atol=tol, rtol=tol)
    assert got.dtype == q.dtype and got.shape == q.shape


def test_reference_matches_torch_reference():
    """The jnp oracle agrees with the torch one (on the canonical layout)."""
    import torch

    from quire.testing.reference import paged_attention as torch_reference

    q, kc, vc, tables, qsl, lens = _case([50, 20, 7], [10, 1, 7], 8, 2, 64, 16, "float32",
                                         padded_tokens=0)
    want = torch_reference(*(torch.from_numpy(np.array(x)) for x in (
        q, kc.transpose(1, 2, 0, 3), vc.transpose(1, 2, 0, 3), tables, qsl, lens)),
        scale=0.125, sliding_window=9, soft_cap=20.0)
    got = paged_attention(q, kc, vc, jnp.asarray(tables), jnp.asarray(qsl), jnp.asarray(lens),
                          0.125, 9, 20.0)
    np.testing.assert_allclose(np.asarray(got), want.numpy(), atol=2e-5, rtol=2e-5)


def test_write_kv_returns_new_cache_with_padding_in_null_block():
    kc = jnp.zeros((2, 4, 16, 64))
    vc = jnp.zeros((2, 4, 16, 64))
    key = jnp.arange(3 * 2 * 64, dtype=jnp.float32).reshape(3, 2, 64)
    new_k, new_v = write_kv(key, -key, kc, vc, jnp.asarray([17, 50, 0]))
    np.testing.assert_array_equal(new_k[:, 1, 1], key[0])
    np.testing.assert_array_equal(new_v[:, 3, 2], -key[1])
    np.testing.assert_array_equal(new_k[:, 0, 0], key[2])  # padding: the null block
    assert int((new_k != 0).any(axis=-1).sum()) == 6  # 3 slots x 2 heads, nothing else
    assert not kc.any()  # the old cache is untouched (a new one is returned)


def test_kernel_params_validation():
    with pytest.raises(ValueError, match="megacore"):
        KernelParams(megacore="both")
    with pytest.raises(ValueError, match="at least 1"):
        KernelParams(query_block=0)
    assert KernelParams(megacore="query_blocks").dimension_semantics() == \
        ("arbitrary", "parallel")
