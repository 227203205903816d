"""CPU attention (fast paths) and the canonical reference against a dense oracle."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from quire.backends.cpu.attention import CpuAttention
from quire.backends.torch.attention import AttentionMetadata
from quire.testing.reference import paged_attention


def make_case(seq_lens, query_lens, num_heads, num_kv_heads, head_size, block_size,
              dtype=torch.float32, seed=0):
    """Random paged cache with shuffled block ids, plus the dense K/V per sequence."""
    g = torch.Generator().manual_seed(seed)
    num_seqs = len(seq_lens)
    max_blocks = max(-(-s // block_size) for s in seq_lens)
    num_blocks = 1 + num_seqs * max_blocks
    perm = (torch.randperm(num_blocks - 1, generator=g) + 1).view(num_seqs, max_blocks)
    block_tables = perm.int()
    key_cache = torch.randn(num_blocks, block_size, num_kv_heads, head_size, generator=g)
    value_cache = torch.randn(num_blocks, block_size, num_kv_heads, head_size, generator=g)
    query = torch.randn(sum(query_lens), num_heads, head_size, generator=g)
    qsl = torch.tensor(np.concatenate([[0], np.cumsum(query_lens)]), dtype=torch.int32)
    return (query.to(dtype), key_cache.to(dtype), value_cache.to(dtype), block_tables, qsl,
            torch.tensor(seq_lens, dtype=torch.int32))


def dense_oracle(query, key_cache, value_cache, block_tables, qsl, seq_lens, scale,
                 window=None, soft_cap=None):
    """Straightforward per-query loop, no paging tricks."""
    out = torch.zeros(query.shape, dtype=torch.float64)
    bs = key_cache.shape[1]
    group = query.shape[1] // key_cache.shape[2]
    for i, L in enumerate(seq_lens.tolist()):
        for t in range(qsl[i].item(), qsl[i + 1].item()):
            pos = L - (qsl[i + 1].item() - t)
            for h in range(query.shape[1]):
                ks, vs = [], []
                for p in range(pos + 1):
                    if window is not None and p <= pos - window:
                        continue
                    blk = block_tables[i, p // bs]
                    ks.append(key_cache[blk, p % bs, h // group].double())
                    vs.append(value_cache[blk, p % bs, h // group].double())
                s = torch.stack(ks) @ query[t, h].double() * scale
                if soft_cap is not None:
                    s = soft_cap * torch.tanh(s / soft_cap)
                out[t, h] = torch.softmax(s, 0) @ torch.stack(vs)
    return out


GRID = [
    # seq_lens, query_lens, Hq, Hkv, D, block_size
    ([5], [5], 4, 4, 16, 4),  # pure prefill, MHA
    ([7, 1, 9], [1, 1, 1], 4, 2, 32, 4),  # pure decode, GQA
    ([12, 6, 3], [4, 1, 3], 8, 2, 16, 8),  # chunked prefill + decode + prefill
    ([33, 17], [1, 17], 6, 1, 64, 16),  # MQA
    # verification rows (a few queries: native decode rows) beside a longer chunk (SDPA)
    ([20, 9, 30, 11], [7, 1, 9, 8], 4, 2, 16, 4),
]


@pytest.mark.parametrize("seq_lens,query_lens,hq,hkv,d,bs", GRID)
@pytest.mark.parametrize("window,soft_cap", [(None, None), (4, None), (None, 5.0)])
def test_reference_matches_dense_oracle(seq_lens, query_lens, hq, hkv, d, bs, window, soft_cap):
    case = make_case(seq_lens, query_lens, hq, hkv, d, bs)
    ref = paged_attention(*case, scale=d**-0.5, sliding_window=window, soft_cap=soft_cap)
    oracle = dense_oracle(*case, scale=d**-0.5, window=window, soft_cap=soft_cap)
    torch.testing.assert_close(ref.double(), oracle, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("seq_lens,query_lens,hq,hkv,d,bs", GRID)
@pytest.mark.parametrize("window,soft_cap", [(None, None), (3, None), (None, 2.0)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("use_native", [True, False])
def test_cpu_impl_matches_reference(seq_lens, query_lens, hq, hkv, d, bs, window, soft_cap,
                                    dtype, use_native, monkeypatch):
    monkeypatch.setenv("QUIRE_CPU_NATIVE", "1" if use_native else "0")
    query, kc, vc, bt, qsl, sl = make_case(seq_lens, query_lens, hq, hkv, d, bs, dtype)
    impl = CpuAttention(hq, hkv, d, d**-0.5, window, soft_cap)
    kv_cache = torch.stack([kc, vc])
    md = AttentionMetadata.from_canonical(qsl, sl, bt)
    got = impl.forward(query, kv_cache, md)
    ref = paged_attention(query, kc, vc, bt, qsl, sl, d**-0.5, window, soft_cap)
    tol = 1e-5 if dtype == torch.float32 else 2e-2
    torch.testing.assert_close(got.float(), ref.float(), atol=tol, rtol=tol)


def test_write_kv_by_slot_mapping_padding_to_null_block():
    impl = CpuAttention(2, 2, 4, 0.5)
    cache = torch.zeros(impl.kv_cache_shape(4, 2, 2, 4))
    key = torch.arange(3 * 2 * 4, dtype=torch.float32).view(3, 2, 4) + 1
    value = -key
    impl.write_kv(key, value, cache, torch.tensor([5, 2, 0]))  # last token is padding
    torch.testing.assert_close(cache[0, 2, 1], key[0])  # slot 5 = block 2, offset 1
    torch.testing.assert_close(cache[1, 1, 0], value[1])  # slot 2 = block 1, offset 0
    assert cache[:, 1:].abs().sum() == key[:2].abs().sum() * 2  # only the null block else


def test_reference_rejects_bad_shapes():
    case = list(make_case([4], [4], 4, 2, 8, 4))
    case[0] = case[0][..., :4]
    with pytest.raises(ValueError, match="head size"):
        paged_attention(*case, scale=1.0)


def test_decode_rows_grouped_by_length():
    from quire.backends.cpu.attention import _length_groups

    seq_lens = np.array([100, 10, 90, 50, 12, 5])
    groups = [g.tolist() for g in _length_groups(np.arange(6), seq_lens)]
    assert groups == [[0, 2], [3], [4, 1], [5]]
    assert _length_groups(np.array([], dtype=np.int64), seq_lens) == []


def test_native_kernel_builds_here_and_matches_reference():
    """The native decode kernel must build on this machine kind (gcc + ninja), not silently
    fall back; then it must agree with the reference, GQA, windows and soft-cap included."""
    from quire.backends.cpu import native

    assert native.available()
    for dtype in (torch.float32, torch.bfloat16):
        for window, cap in [(None, None), (5, None), (None, 3.0)]:
            q, kc, vc, bt, qsl, sl = make_case([9, 1, 40, 16], [1, 1, 1, 1], 8, 2, 64, 8, dtype)
            got = native.paged_decode(q, kc, vc, bt, sl, 0.125, window, cap)
            ref = paged_attention(q, kc, vc, bt, qsl, sl, 0.125, window, cap)
            tol = 1e-5 if dtype == torch.float32 else 2e-2
            torch.testing.assert_close(got.float(), ref.float(), atol=tol, rtol=tol)


@pytest.mark.parametrize("kv_quant", [None, "int8"])
def test_native_verification_rows_share_their_reads(kv_quant):
    """Rows of one sequence with contexts one longer each (a request's speculative
    verification rows) run as one job reading K/V once: each row's result equals the same
    row computed alone, bit for bit, and the reference; windows included, and beside rows of
    other sequences (runs are found by block table and length)."""
    from quire.backends.cpu import native
    from quire.backends.torch import kv_quant as kvq

    assert native.available()
    # head sizes: 64, 32, 128, 96, 256 take the bf16 tiles-of-16 job (decode_vec_csrc.py),
    # 48 the plain one
    for window, hq, hkv, d in [(None, 8, 2, 64), (6, 6, 3, 32), (None, 4, 4, 48),
                               (None, 4, 2, 128), (5, 3, 3, 96), (None, 2, 1, 256)]:
        q, kc, vc, bt, _, _ = make_case([40, 23], [1, 1], hq, hkv, d, 4, torch.bfloat16, seed=3)
        # rows 0-6: sequence 0 at contexts 34..40; row 7: sequence 1; rows 8-9: sequence 0
        # again at 20, 21 (a second run with the same table)
        rows_bt = torch.cat([bt[:1].expand(7, -1), bt[1:2], bt[:1].expand(2, -1)]).contiguous()
        lens = torch.tensor([34, 35, 36, 37, 38, 39, 40, 23, 20, 21], dtype=torch.int32)
        qs = torch.randn(len(lens), hq, d, generator=torch.Generator().manual_seed(4))
        qs = qs.bfloat16()
        caches = (kc, vc)
        if kv_quant is not None:  # uint8 rows: values, then the float32 scale
            caches = tuple(torch.cat([v.view(torch.uint8), sc.unsqueeze(-1).view(torch.uint8)],
                                     -1).contiguous()
                           for v, sc in (kvq.quantize(c, kv_quant) for c in caches))
        got = native.paged_decode(qs, *caches, rows_bt, lens, 0.2, window, None, kv_quant)
        for r in range(len(lens)):
            alone = native.paged_decode(qs[r:r + 1], *caches, rows_bt[r:r + 1],
                                        lens[r:r + 1], 0.2, window, None, kv_quant)
            assert torch.equal(got[r:r + 1], alone), r
        if kv_quant is None:
            qsl = torch.arange(len(lens) + 1, dtype=torch.int32)
            ref = paged_attention(qs, kc, vc, rows_bt, qsl, lens, 0.2, window, None)
            torch.testing.assert_close(got.float(), ref.float(), atol=2e-2, rtol=2e-2)


@pytest.mark.parametrize("bs, window", [(16, None), (16, 200), (4, None), (8, 150), (32, 70)])
def test_native_long_contexts_in_chunks(bs, window):
    """Contexts past one chunk (128 tokens) run as one job per chunk, merged in order: each
    row agrees with the reference, and equals itself computed alone bit for bit (the chunk
    grid is fixed, so a row's result does not depend on the call), verification runs and
    windows that start mid-chunk included."""
    from quire.backends.cpu import native

    assert native.available()
    q, kc, vc, bt, _, _ = make_case([600, 130, 257], [1, 1, 1], 6, 3, 32, bs, torch.bfloat16,
                                    seed=5)
    # rows 0-4: sequence 0 at contexts 596..600 (one run); row 5: sequence 1 at 130 (two
    # chunks, the second of 2 tokens); row 6: sequence 2 at 257; row 7: sequence 0 at 128
    rows_bt = torch.cat([bt[:1].expand(5, -1), bt[1:2], bt[2:3], bt[:1]]).contiguous()
    lens = torch.tensor([596, 597, 598, 599, 600, 130, 257, 128], dtype=torch.int32)
    qs = torch.randn(len(lens), 6, 32, generator=torch.Generator().manual_seed(6)).bfloat16()
    got = native.paged_decode(qs, kc, vc, rows_bt, lens, 0.2, window, None)
    for r in range(len(lens)):
        alone = native.paged_decode(qs[r:r + 1], kc, vc, rows_bt[r:r + 1], lens[r:r + 1], 0.2,
                                    window, None)
        assert torch.equal(got[r:r + 1], alone), r
    qsl = torch.arange(len(lens) + 1, dtype=torch.int32)
    ref = paged_attention(qs, kc, vc, rows_bt, qsl, lens, 0.2, window, None)
    torch.testing.assert_close(got.float(), ref.float(), atol=2e-2, rtol=2e-2)
    f32 = native.paged_decode(qs.float(), kc.float(), vc.float(), rows_bt, lens, 0.2, window,
                              None)
    ref32 = paged_attention(qs.float(), kc.float(), vc.float(), rows_bt, qsl, lens, 0.2, window,
                            None)
    torch.testing.assert_close(f32, ref32, atol=1e-5, rtol=1e-5)
