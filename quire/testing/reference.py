"""The canonical KV write and paged attention every backend is compared against (the
conformance kit's oracle), in plain torch.

Dimensions: T tokens, Hq query heads, Hkv KV heads, D head size, N blocks, S block size,
R sequences, B max blocks per sequence.

The canonical layout: one key cache and one value cache of [N, S, Hkv, D]. Token t of a
batch lives in slot ``slot_mapping[t] = block_id * S + offset``; block 0 is the null block,
where padded tokens write (slot 0..S-1) and which no real sequence reads. A backend may keep
any layout of its own; its ``ops`` module converts to and from this one.
"""

from __future__ import annotations

import torch

from quire.core.sizing import cdiv


def paged_attention(
    query: torch.Tensor,
    key_cache: torch.Tensor,
    value_cache: torch.Tensor,
    block_tables: torch.Tensor,
    query_start_loc: torch.Tensor,
    seq_lens: torch.Tensor,
    scale: float,
    sliding_window: int | None = None,
    soft_cap: float | None = None,
) -> torch.Tensor:
    """Causal paged attention over packed ragged queries, computed in fp32.

    query:           [T, Hq, D]
    key_cache:       [N, S, Hkv, D]
    value_cache:     [N, S, Hkv, D]
    block_tables:    [R, B] int32, the blocks holding each sequence's positions in order
    query_start_loc: [R+1] int32; sequence i's queries are query[qsl[i]:qsl[i+1]], the
                     last ones of its seq_lens[i] positions
    seq_lens:        [R] int32
    sliding_window:  a query at position p sees keys at positions > p - sliding_window
    soft_cap:        scores become soft_cap * tanh(scores / soft_cap)
    returns          [T, Hq, D] in query's dtype
    """
    _check_shapes(query, key_cache, value_cache, block_tables, query_start_loc, seq_lens)
    out = torch.zeros_like(query)
    block_size = key_cache.shape[1]
    qsl = query_start_loc.tolist()
    for i, seq_len in enumerate(seq_lens.tolist()):
        start, end = qsl[i], qsl[i + 1]
        if end == start:
            continue
        num_blocks = cdiv(seq_len, block_size)
        blocks = block_tables[i, :num_blocks].long()
        k = key_cache[blocks].reshape(-1, *key_cache.shape[2:])[:seq_len]
        v = value_cache[blocks].reshape(-1, *value_cache.shape[2:])[:seq_len]
        out[start:end] = attend(query[start:end], k, v, seq_len - (end - start), scale,
                                sliding_window, soft_cap).to(query.dtype)
    return out


def write_kv(key: torch.Tensor, value: torch.Tensor, key_cache: torch.Tensor,
             value_cache: torch.Tensor, slot_mapping: torch.Tensor) -> None:
    """Scatter key/value [T, Hkv, D] into key/value_cache [N, S, Hkv, D] in place, token t at
    slot slot_mapping[t] [T] (block slot // S, offset slot % S)."""
    if key.shape != value.shape or key.shape[0] != slot_mapping.shape[0]:
        raise ValueError(f"key {tuple(key.shape)}, value {tuple(value.shape)} and "
                         f"slot_mapping {tuple(slot_mapping.shape)} disagree")
    num_blocks, block_size = key_cache.shape[:2]
    flat = slot_mapping.long()
    key_cache.view(num_blocks * block_size, *key_cache.shape[2:])[flat] = key.to(key_cache.dtype)
    value_cache.view(num_blocks * block_size, *value_cache.shape[2:])[flat] = \
        value.to(value_cache.dtype)


def attend(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    context_len: int,
    scale: float,
    sliding_window: int | None = None,
    soft_cap: float | None = None,
) -> torch.Tensor:
    """One sequence: q [Q, Hq, D] at positions context_len.., k/v [L, Hkv, D] -> [Q, Hq, D]
    fp32."""
    num_q, num_heads, head_size = q.shape
    num_kv_heads = k.shape[1]
    group = num_heads // num_kv_heads
    qf = q.float().reshape(num_q, num_kv_heads, group, head_size).permute(1, 2, 0, 3)
    kf = k.float().permute(1, 0, 2).unsqueeze(1)  # [Hkv, 1, L, D]
    vf = v.float().permute(1, 0, 2).unsqueeze(1)
    scores = (qf @ kf.transpose(-1, -2)) * scale  # [Hkv, G, Q, L]
    if soft_cap is not None:
        scores = soft_cap * torch.tanh(scores / soft_cap)
    q_pos = torch.arange(num_q).unsqueeze(1) + context_len
    k_pos = torch.arange(k.shape[0]).unsqueeze(0)
    visible = k_pos <= q_pos
    if sliding_window is not None:
        visible &= k_pos > q_pos - sliding_window
    scores = scores.masked_fill(~visible, float("-inf"))
    probs = torch.softmax(scores, dim=-1)
    out = probs @ vf  # [Hkv, G, Q, D]
    return out.permute(2, 0, 1, 3).reshape(num_q, num_heads, head_size)


def _check_shapes(query, key_cache, value_cache, block_tables, query_start_loc, seq_lens):
    if query.dim() != 3 or key_cache.dim() != 4:
        raise ValueError("query must be [T, Hq, D] and key_cache [N, S, Hkv, D]")
    if key_cache.shape != value_cache.shape:
        raise ValueError(f"key_cache {tuple(key_cache.shape)} and value_cache "
                         f"{tuple(value_cache.shape)} differ")
    if query.shape[2] != key_cache.shape[3]:
        raise ValueError(f"head size {query.shape[2]} != cache head size {key_cache.shape[3]}")
    if query.shape[1] % key_cache.shape[2]:
        raise ValueError(f"{query.shape[1]} query heads are not a multiple of "
                         f"{key_cache.shape[2]} KV heads")
    if query_start_loc.shape[0] != seq_lens.shape[0] + 1:
        raise ValueError("query_start_loc must have one more entry than seq_lens")
    if block_tables.shape[0] < seq_lens.shape[0]:
        raise ValueError("block_tables needs a row for every sequence")
