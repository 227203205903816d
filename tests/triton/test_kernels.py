"""quire's Triton kernels against the reference, over head sizes, block sizes, GQA ratios,
ragged mixes of prefill / chunked prefill / decode, padding, dtypes, windows, soft-caps and
the split-KV path. On a CPU they run in Triton's interpreter (small shapes)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from quire.backends.triton.attention import paged_attention, write_kv
from quire.backends.triton.config import KernelConfig, block_q_for, num_kv_splits
from quire.testing.reference import paged_attention as reference

TOL = {torch.float32: 2e-5, torch.float16: 5e-3, torch.bfloat16: 3e-2}


def make_case(seq_lens, query_lens, hq, hkv, d, bs, dtype, device, pad_reqs=0, pad_tokens=0,
              seed=0):
    """Padding as the core adds it: requests with no query and seq_len 0, and tokens past
    the last request's queries."""
    g = torch.Generator().manual_seed(seed)
    max_blocks = max(-(-s // bs) for s in seq_lens)
    num_blocks = 1 + len(seq_lens) * max_blocks
    tables = (torch.randperm(num_blocks - 1, generator=g) + 1).view(len(seq_lens), -1).int()
    tables = torch.cat([tables, torch.zeros(pad_reqs, max_blocks, dtype=torch.int32)])
    kc = torch.randn(num_blocks, bs, hkv, d, generator=g).to(dtype)
    vc = torch.randn(num_blocks, bs, hkv, d, generator=g).to(dtype)
    q = torch.randn(sum(query_lens) + pad_tokens, hq, d, generator=g).to(dtype)
    qsl = np.concatenate([[0], np.cumsum(query_lens), [sum(query_lens)] * pad_reqs])
    lens = torch.tensor(list(seq_lens) + [0] * pad_reqs, dtype=torch.int32)
    return [t.to(device) for t in (q, kc, vc, tables, torch.tensor(qsl, dtype=torch.int32),
                                   lens)]


CASES = [
    # seq_lens, query_lens, Hq, Hkv, D, block size, dtype, window, soft cap
    ([17], [17], 4, 4, 64, 16, torch.float32, None, None),
    ([40, 1, 33, 5], [1, 1, 1, 1], 8, 1, 64, 16, torch.float16, None, None),
    ([50, 20, 7], [10, 1, 7], 8, 2, 80, 32, torch.bfloat16, None, None),
    ([70, 33], [1, 33], 12, 4, 96, 64, torch.float32, 16, None),
    ([90, 64], [40, 64], 8, 8, 128, 16, torch.float16, None, 20.0),
    ([130, 3], [2, 3], 4, 1, 256, 32, torch.float32, 40, 30.0),
    ([100, 60, 1], [1, 20, 1], 9, 3, 64, 16, torch.float32, None, None),  # group 3 (padded)
    ([90, 5], [1, 5], 4, 2, 64, 8, torch.float32, None, None),  # tiles span 4-8 pages
    ([300, 129], [40, 1], 4, 1, 128, 128, torch.bfloat16, 70, None),  # pages span tiles
]


@pytest.mark.parametrize("seq_lens,query_lens,hq,hkv,d,bs,dtype,window,cap", CASES)
def test_unified_kernel_matches_reference(device, seq_lens, query_lens, hq, hkv, d, bs,
                                          dtype, window, cap):
    case = make_case(seq_lens, query_lens, hq, hkv, d, bs, dtype, device, pad_reqs=2,
                     pad_tokens=3)
    got = paged_attention(*case, scale=d**-0.5, sliding_window=window, soft_cap=cap,
                          num_splits=1)
    want = reference(*(t.cpu() for t in case), scale=d**-0.5, sliding_window=window,
                     soft_cap=cap)
    real = sum(query_lens)
    torch.testing.assert_close(got[:real].float().cpu(), want[:real].float(),
                               atol=TOL[dtype], rtol=TOL[dtype])


@pytest.mark.parametrize("splits", [2, 4, 16])
@pytest.mark.parametrize("seq_lens,hq,hkv,d,bs,dtype,window", [
    ([300, 1, 77], 8, 2, 64, 16, torch.float32, None),
    ([200, 129], 4, 4, 128, 32, torch.bfloat16, None),
    ([260, 40], 6, 2, 96, 64, torch.float32, 100),
])
def test_split_kv_decode_matches_reference(device, seq_lens, hq, hkv, d, bs, dtype, window,
                                           splits):
    case = make_case(seq_lens, [1] * len(seq_lens), hq, hkv, d, bs, dtype, device, pad_reqs=1,
                     pad_tokens=1)
    got = paged_attention(*case, scale=d**-0.5, sliding_window=window, num_splits=splits)
    want = reference(*(t.cpu() for t in case), scale=d**-0.5, sliding_window=window)
    n = len(seq_lens)
    torch.testing.assert_close(got[:n].float().cpu(), want[:n].float(), atol=TOL[dtype],
                               rtol=TOL[dtype])


def test_split_kv_refuses_prefill(device):
    case = make_case([20], [4], 4, 4, 64, 16, torch.float32, device)
    with pytest.raises(ValueError, match="decode"):
        paged_attention(*case, scale=0.125, num_splits=2)


@pytest.mark.parametrize("hkv,d,bs", [(1, 64, 16), (3, 80, 32), (4, 128, 64)])
def test_write_kv_scatters_and_pads_to_null_block(device, hkv, d, bs):
    kc = torch.zeros(4, bs, hkv, d, device=device)
    vc = torch.zeros(4, bs, hkv, d, device=device)
    slots = torch.tensor([bs + 3, 3 * bs, 2 * bs + bs - 1, 0, 0], device=device)
    key = torch.randn(5, hkv, d, device=device)
    value = torch.randn(5, hkv, d, device=device)
    write_kv(key, value, kc, vc, slots)
    for t, slot in enumerate(slots[:3].tolist()):
        torch.testing.assert_close(kc[slot // bs, slot % bs], key[t])
        torch.testing.assert_close(vc[slot // bs, slot % bs], value[t])
    assert int(kc[1:].abs().sum(-1).gt(0).sum()) == 3 * hkv  # nothing else written


def test_block_q_and_split_heuristics():
    cfg = KernelConfig(min_rows=16, max_block_q=16, target_programs=256, split_min_tokens=512,
                       split_max=16)
    assert block_q_for(group=1, max_query_len=1, cfg=cfg) == 16
    assert block_q_for(group=4, max_query_len=1, cfg=cfg) == 4
    assert block_q_for(group=3, max_query_len=1, cfg=cfg) == 4  # group padded to 4
    assert block_q_for(group=8, max_query_len=100, cfg=cfg) == 16
    # one long decode on 8 KV heads: 8 programs -> split to fill 256 programs, capped at 16
    assert num_kv_splits(1, 8, 32768, 1, cfg) == 16
    # context too short to be worth it
    assert num_kv_splits(1, 8, 600, 1, cfg) == 1
    assert num_kv_splits(1, 8, 2048, 1, cfg) == 4  # 2048 / 512
    # enough requests already fill the device; prefill never splits
    assert num_kv_splits(64, 8, 32768, 1, cfg) == 1
    assert num_kv_splits(1, 8, 32768, 7, cfg) == 1
    assert num_kv_splits(4, 8, 32768, 1, cfg) == 8  # 32 programs -> 8 splits
