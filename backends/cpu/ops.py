"""Canonical-layout entry points of the cpu backend (what the conformance kit checks): the
same CpuAttention code the engine runs, with the canonical caches stacked into its layout."""

from __future__ import annotations

import torch

from quire.backends.cpu.attention import CpuAttention
from quire.backends.torch.attention import AttentionMetadata


def paged_attention(query: torch.Tensor, key_cache: torch.Tensor, value_cache: torch.Tensor,
                    block_tables: torch.Tensor, query_start_loc: torch.Tensor,
                    seq_lens: torch.Tensor, scale: float, sliding_window: int | None = None,
                    soft_cap: float | None = None) -> torch.Tensor:
    """Shapes as quire.testing.reference.paged_attention."""
    impl = CpuAttention(query.shape[1], key_cache.shape[2], key_cache.shape[3], scale,
                        sliding_window, soft_cap)
    md = AttentionMetadata.from_canonical(query_start_loc, seq_lens, block_tables)
    return impl.forward(query, torch.stack([key_cache, value_cache]), md)


def write_kv(key: torch.Tensor, value: torch.Tensor, key_cache: torch.Tensor,
             value_cache: torch.Tensor, slot_mapping: torch.Tensor) -> None:
    """key/value [T, Hkv, D] into key/value_cache [N, S, Hkv, D] in place."""
    impl = CpuAttention(key.shape[1], key.shape[1], key.shape[2], 1.0)
    kv = torch.stack([key_cache, value_cache])
    impl.write_kv(key, value, kv, slot_mapping)
    key_cache.copy_(kv[0])
    value_cache.copy_(kv[1])
