"""TritonAttention: the torch family's AttentionImpl over quire's Triton kernels.

Cache layout (one layer): [2, N, S, Hkv, D], keys then values (the canonical layout per
half). Everything is decided from tensor shapes and the batch's host metadata, so a
decode step launched with fixed metadata can be captured in a CUDA graph.
"""

from __future__ import annotations

import torch

from quire.backends.torch import kv_quant as kvq
from quire.backends.torch.attention import AttentionImpl, AttentionMetadata
from quire.backends.torch.kv_quant import KV_QUANT_DTYPES
from quire.backends.triton.config import (
    KernelConfig,
    block_q_for,
    interpreting,
    next_pow2,
    num_kv_splits,
    tile_for,
)

DEFAULT_CONFIG = KernelConfig()


class TritonAttention(AttentionImpl):
    kernel_config = DEFAULT_CONFIG
    kv_quant_dtypes = KV_QUANT_DTYPES

    def write_kv(self, key: torch.Tensor, value: torch.Tensor, kv_cache: torch.Tensor,
                 slot_mapping: torch.Tensor) -> None:
        if self.kv_quant is not None:  # quantized in torch ops (device-side, graph-safe)
            kvq.write(kv_cache[0], slot_mapping, key, self.kv_quant)
            kvq.write(kv_cache[1], slot_mapping, value, self.kv_quant)
            return
        write_kv(key, value, kv_cache[0], kv_cache[1], slot_mapping, self.kernel_config)

    def forward(self, query: torch.Tensor, kv_cache: torch.Tensor,
                metadata: AttentionMetadata) -> torch.Tensor:
        return paged_attention(
            query, kv_cache[0], kv_cache[1], metadata.block_tables, metadata.query_start_loc,
            metadata.seq_lens, self.scale, self.sliding_window, self.soft_cap,
            max_query_len=metadata.max_query_len, max_seq_len=metadata.max_seq_len,
            cfg=self.kernel_config, kv_quant=self.kv_quant)


def write_kv(key: torch.Tensor, value: torch.Tensor, key_cache: torch.Tensor,
             value_cache: torch.Tensor, slot_mapping: torch.Tensor,
             cfg: KernelConfig = DEFAULT_CONFIG) -> None:
    """key/value [T, Hkv, D] into key/value_cache [N, S, Hkv, D] at slot_mapping [T]."""
    from quire.backends.triton import kernels

    if key.shape[0] == 0:
        return
    if key_cache.stride() != value_cache.stride() or key_cache.stride(-1) != 1:
        raise ValueError("key and value caches need the same strides, head dim contiguous")
    num_tokens, num_kv_heads, head_size = key.shape
    key, value = key.contiguous(), value.contiguous()
    kernels._write_kv_kernel[(num_tokens,)](
        key, value, key_cache, value_cache, slot_mapping,
        key.stride(0), key.stride(1), value.stride(0), value.stride(1),
        key_cache.stride(0), key_cache.stride(1), key_cache.stride(2),
        NUM_KV_HEADS=num_kv_heads, HEADS_PAD=next_pow2(num_kv_heads), HEAD=head_size,
        HEAD_PAD=next_pow2(max(head_size, 16)), BLOCK_SIZE=key_cache.shape[1])


def paged_attention(query: torch.Tensor, key_cache: torch.Tensor, value_cache: torch.Tensor,
                    block_tables: torch.Tensor, query_start_loc: torch.Tensor,
                    seq_lens: torch.Tensor, scale: float, sliding_window: int | None = None,
                    soft_cap: float | None = None, *, max_query_len: int | None = None,
                    max_seq_len: int | None = None, num_splits: int | None = None,
                    cfg: KernelConfig = DEFAULT_CONFIG, kv_quant: str | None = None
                    ) -> torch.Tensor:
    """Shapes as quire.testing.reference.paged_attention: query [T, Hq, D]; caches
    [N, S, Hkv, D] (with kv_quant "int8" / "fp8_e4m3": uint8 [N, S, Hkv, D + 4], rows of
    values then a float32 scale); block_tables [R, B]; query_start_loc [R+1]; seq_lens [R]
    (int32, on the query's device). max_query_len / max_seq_len: host-known maxima
    (computed here when None); num_splits forces the split-KV path (decode only) or the
    unified one (1)."""
    from quire.backends.triton import kernels

    num_tokens, num_heads, head_size = query.shape
    _, block_size, num_kv_heads, _ = key_cache.shape
    if num_heads % num_kv_heads:
        raise ValueError(f"{num_heads} query heads are not a multiple of {num_kv_heads}")
    if key_cache.stride() != value_cache.stride() or key_cache.stride(-1) != 1:
        raise ValueError("key and value caches need the same strides, head dim contiguous")
    if block_size & (block_size - 1):
        raise ValueError(f"block size {block_size} unsupported: a power of two")
    query = query.contiguous()
    out = torch.empty_like(query)
    num_reqs = seq_lens.shape[0]
    kv_args = _kv_args(key_cache, value_cache, kv_quant, head_size)
    if num_tokens == 0 or num_reqs == 0:
        return out
    if max_query_len is None:
        max_query_len = int((query_start_loc[1:] - query_start_loc[:-1]).max())
    if max_seq_len is None:
        max_seq_len = int(seq_lens.max())
    group = num_heads // num_kv_heads
    common = dict(HEAD=head_size, HEAD_PAD=next_pow2(max(head_size, 16)),
                  BLOCK_SIZE=block_size, TILE=tile_for(max_query_len, cfg),
                  WINDOW=sliding_window or 0,
                  USE_SOFT_CAP=soft_cap is not None,
                  UPCAST_DOT=query.dtype == torch.bfloat16 and interpreting(),
                  KV_QUANT=_KV_QUANT[kv_quant])
    soft_cap = float(soft_cap or 0.0)
    if num_splits is None:
        num_splits = num_kv_splits(num_reqs, num_kv_heads, max_seq_len, max_query_len, cfg)
    if num_splits > 1:
        if max_query_len != 1:
            raise ValueError("the split-KV path serves decode batches (one query each)")
        _split_kv(out, query, key_cache, kv_args, block_tables, query_start_loc, seq_lens,
                  scale, soft_cap, num_splits, group, common, cfg)
        return out
    block_q = block_q_for(group, max_query_len, cfg)
    grid = (num_tokens // block_q + num_reqs, num_kv_heads)
    kernels._unified_attention_kernel[grid](
        out, query, *kv_args, block_tables, query_start_loc, seq_lens, scale, soft_cap,
        num_reqs,
        query.stride(0), query.stride(1), out.stride(0), out.stride(1),
        key_cache.stride(0), key_cache.stride(1), key_cache.stride(2), block_tables.stride(0),
        GROUP=group, GROUP_PAD=next_pow2(group), BLOCK_Q=block_q, **common,
        **cfg.launch_options())
    return out


_KV_QUANT = {None: 0, "int8": 1, "fp8_e4m3": 2}


def _kv_args(key_cache: torch.Tensor, value_cache: torch.Tensor, kv_quant: str | None,
             head_size: int) -> tuple[torch.Tensor, ...]:
    """(key values, value values, key scales, value scales) as the kernels take them: the
    caches themselves (scales unused) or, for an 8-bit cache, its bytes as values
    (int8 for int8; raw bytes for e4m3, decoded in the kernel) and as float32."""
    if kv_quant is None:
        return key_cache, value_cache, key_cache, value_cache
    if key_cache.dtype != torch.uint8 or key_cache.shape[-1] != kvq.row_bytes(head_size):
        raise ValueError(f"an {kv_quant} cache is uint8 [N, S, Hkv, D + 4]")
    values = torch.int8 if kv_quant == "int8" else torch.uint8
    return (key_cache.view(values), value_cache.view(values), key_cache.view(torch.float32),
            value_cache.view(torch.float32))


def _split_kv(out, query, key_cache, kv_args, block_tables, query_start_loc, seq_lens,
              scale, soft_cap, num_splits, group, common, cfg) -> None:
    from quire.backends.triton import kernels

    num_reqs, num_heads = seq_lens.shape[0], query.shape[1]
    num_kv_heads = key_cache.shape[2]
    head_pad = common["HEAD_PAD"]
    part_out = torch.empty(num_reqs, num_heads, num_splits, head_pad, dtype=torch.float32,
                           device=query.device)
    part_lse = torch.empty(num_reqs, num_heads, num_splits, dtype=torch.float32,
                           device=query.device)
    kernels._split_kv_decode_kernel[(num_reqs, num_kv_heads, num_splits)](
        part_out, part_lse, query, *kv_args, block_tables, query_start_loc, seq_lens, scale,
        soft_cap,
        query.stride(0), query.stride(1),
        key_cache.stride(0), key_cache.stride(1), key_cache.stride(2), block_tables.stride(0),
        NUM_HEADS=num_heads, NUM_SPLITS=num_splits, GROUP=group,
        ROWS=max(cfg.min_rows, next_pow2(group)), **common, **cfg.launch_options())
    kernels._reduce_splits_kernel[(num_reqs, num_heads)](
        out, part_out, part_lse, query_start_loc, out.stride(0), out.stride(1),
        NUM_HEADS=num_heads, NUM_SPLITS=num_splits, HEAD=common["HEAD"], HEAD_PAD=head_pad)
