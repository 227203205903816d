"""Canonical-layout entry points for quire's conformance kit."""

from __future__ import annotations

import torch

from quire.backends.torch.attention import AttentionMetadata
from quire_example_accel.attention import HeadMajorAttention


def _to_native(key_cache, value_cache):
    # canonical [N, S, Hkv, D] -> ours [2, Hkv, N, S, D]
    return torch.stack([key_cache, value_cache]).permute(0, 3, 1, 2, 4).contiguous()


def paged_attention(query, key_cache, value_cache, block_tables, query_start_loc, seq_lens,
                    scale, sliding_window=None, soft_cap=None):
    if soft_cap is not None:
        raise NotImplementedError("the example backend has no logit soft-cap")
    num_kv_heads, head_size = key_cache.shape[2], key_cache.shape[3]
    impl = HeadMajorAttention(query.shape[1], num_kv_heads, head_size, scale, sliding_window)
    md = AttentionMetadata.from_canonical(query_start_loc, seq_lens, block_tables)
    return impl.forward(query, _to_native(key_cache, value_cache), md)


def write_kv(key, value, key_cache, value_cache, slot_mapping):
    num_kv_heads, head_size = key_cache.shape[2], key_cache.shape[3]
    impl = HeadMajorAttention(num_kv_heads, num_kv_heads, head_size, 1.0)
    native = _to_native(key_cache, value_cache)
    impl.write_kv(key, value, native, slot_mapping)
    canonical = native.permute(0, 2, 3, 1, 4)
    key_cache.copy_(canonical[0])
    value_cache.copy_(canonical[1])
