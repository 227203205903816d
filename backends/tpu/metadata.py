"""Attention metadata of the tpu backend: a registered pytree dataclass built on the host
(numpy) from the core's Batch vocabulary, then passed explicitly into the jitted step.

Dimensions: T tokens (a token bucket), R requests (a request bucket), B max blocks per
request, Q the kernel's query block, NQ = T // Q + R query blocks (an upper bound on the
blocks the ragged queries need, so shapes depend on the buckets only).

The kernel works on query blocks: each holds up to Q consecutive query tokens of one
request, so a block never straddles two requests::

    tokens   | r0 r0 r0 | r1 | r2 r2 r2 r2 r2 |          (Q = 4)
    blocks   [r0 r0 r0 -][r1 - - -][r2 r2 r2 r2][r2 - - -][- - - -] ...
"""

from __future__ import annotations

from dataclasses import dataclass

import jax
import numpy as np


@jax.tree_util.register_dataclass
@dataclass(frozen=True, slots=True)
class TpuAttentionMetadata:
    slot_mapping: jax.Array  # [T] int32, where each token's K/V goes (padding: slot 0)
    query_start_loc: jax.Array  # [R+1] int32
    seq_lens: jax.Array  # [R] int32
    block_tables: jax.Array  # [R, B] int32
    block_seq: jax.Array  # [NQ] int32, the request a query block belongs to
    block_first_pos: jax.Array  # [NQ] int32, position of its first query
    block_num_queries: jax.Array  # [NQ] int32, valid queries in it (0: padding block)
    row_token: jax.Array  # [NQ*Q] int32, the token at each query-block row (padding: 0)
    token_row: jax.Array  # [T] int32, the query-block row of each token


def build_metadata(query_start_loc: np.ndarray, seq_lens: np.ndarray,
                   block_tables: np.ndarray, slot_mapping: np.ndarray,
                   query_block: int) -> TpuAttentionMetadata:
    """Host-side planning. Inputs in the core's vocabulary, already padded to buckets:
    query_start_loc [R+1], seq_lens [R], block_tables [R, B], slot_mapping [T]."""
    num_tokens = len(slot_mapping)
    num_reqs = len(seq_lens)
    num_blocks = num_tokens // query_block + num_reqs
    query_lens = np.diff(query_start_loc).astype(np.int64)
    per_req = (query_lens + query_block - 1) // query_block  # cdiv, elementwise
    used = int(per_req.sum())
    first_block = np.cumsum(per_req) - per_req
    seq = np.repeat(np.arange(num_reqs), per_req)
    local = np.arange(used) - np.repeat(first_block, per_req)
    context = seq_lens.astype(np.int64) - query_lens

    block_seq = np.zeros(num_blocks, np.int32)
    block_first_pos = np.zeros(num_blocks, np.int32)
    block_num_queries = np.zeros(num_blocks, np.int32)
    block_seq[:used] = seq
    block_first_pos[:used] = context[seq] + local * query_block
    block_num_queries[:used] = np.minimum(query_block, query_lens[seq] - local * query_block)

    offsets = np.arange(query_block)
    first_token = query_start_loc[seq].astype(np.int64) + local * query_block
    valid = offsets[None, :] < block_num_queries[:used, None]
    row_token = np.zeros((num_blocks, query_block), np.int32)
    row_token[:used] = np.where(valid, first_token[:, None] + offsets[None, :], 0)
    token_row = np.zeros(num_tokens, np.int32)
    rows = (np.arange(used)[:, None] * query_block + offsets[None, :])[valid]
    token_row[row_token[:used][valid]] = rows
    return TpuAttentionMetadata(
        slot_mapping=slot_mapping.astype(np.int32),
        query_start_loc=query_start_loc.astype(np.int32),
        seq_lens=seq_lens.astype(np.int32),
        block_tables=block_tables.astype(np.int32),
        block_seq=block_seq,
        block_first_pos=block_first_pos,
        block_num_queries=block_num_queries,
        row_token=row_token.reshape(-1),
        token_row=token_row,
    )
