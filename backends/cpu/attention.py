"""CPU attention: plain torch over a [2, N, S, Hkv, D] per-layer cache.

Decode rows (one query each) run together in one padded batched matmul; rows with several
queries (prefill, chunked prefill) run one by one through SDPA.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from quire.backends.cpu.reference import attend
from quire.backends.torch.attention import AttentionImpl, AttentionMetadata
from quire.backends.torch.workspace import Workspace


class CpuAttention(AttentionImpl):
    @staticmethod
    def kv_cache_shape(num_blocks: int, block_size: int, num_kv_heads: int,
                       head_size: int) -> tuple[int, ...]:
        return (2, num_blocks, block_size, num_kv_heads, head_size)

    def write_kv(self, key: torch.Tensor, value: torch.Tensor, kv_cache: torch.Tensor,
                 slot_mapping: torch.Tensor) -> None:
        flat = kv_cache.view(2, -1, self.num_kv_heads, self.head_size)
        flat[0].index_copy_(0, slot_mapping, key)
        flat[1].index_copy_(0, slot_mapping, value)

    def forward(self, query: torch.Tensor, kv_cache: torch.Tensor,
                metadata: AttentionMetadata) -> torch.Tensor:
        self.workspace = metadata.workspace or Workspace()
        out = torch.empty_like(query)
        qsl = metadata.query_start_loc_host
        seq_lens = metadata.seq_lens_host
        num_reqs = metadata.num_reqs
        query_lens = qsl[1 : num_reqs + 1] - qsl[:num_reqs]
        decode_rows = (query_lens == 1).nonzero()[0]
        for group in _length_groups(decode_rows, seq_lens):
            self._decode(query, kv_cache, metadata, group, out)
        for i in (query_lens > 1).nonzero()[0].tolist():
            start, end, seq_len = int(qsl[i]), int(qsl[i + 1]), int(seq_lens[i])
            out[start:end] = self._prefill(query[start:end], kv_cache,
                                           metadata.block_tables[i], seq_len)
        return out

    def _gather(self, kv_cache: torch.Tensor, blocks: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """blocks [..., nb] -> keys, values [..., nb * S, Hkv, D], copied into the workspace."""
        flat = blocks.reshape(-1)
        block_shape = tuple(kv_cache.shape[2:])
        k = self.workspace.get("k", (flat.numel(), *block_shape), kv_cache.dtype)
        v = self.workspace.get("v", (flat.numel(), *block_shape), kv_cache.dtype)
        torch.index_select(kv_cache[0], 0, flat, out=k)
        torch.index_select(kv_cache[1], 0, flat, out=v)
        shape = (*blocks.shape[:-1], -1, self.num_kv_heads, self.head_size)
        return k.view(shape), v.view(shape)

    def _prefill(self, q: torch.Tensor, kv_cache: torch.Tensor, block_table: torch.Tensor,
                 seq_len: int) -> torch.Tensor:
        block_size = kv_cache.shape[2]
        num_blocks = -(-seq_len // block_size)
        k, v = self._gather(kv_cache, block_table[:num_blocks].long())
        k, v = k[:seq_len], v[:seq_len]
        num_q = q.shape[0]
        if self.soft_cap is not None:
            return attend(q, k, v, seq_len - num_q, self.scale, self.sliding_window,
                          self.soft_cap).to(q.dtype)
        q_pos = torch.arange(seq_len - num_q, seq_len).unsqueeze(1)
        k_pos = torch.arange(seq_len).unsqueeze(0)
        mask = k_pos <= q_pos
        if self.sliding_window is not None:
            mask &= k_pos > q_pos - self.sliding_window
        out = F.scaled_dot_product_attention(
            q.transpose(0, 1).unsqueeze(0), k.transpose(0, 1).unsqueeze(0),
            v.transpose(0, 1).unsqueeze(0), attn_mask=mask, scale=self.scale,
            enable_gqa=self.num_heads != self.num_kv_heads,
        )  # [1, Hq, Q, D]
        return out[0].transpose(0, 1)

    def _decode(self, query: torch.Tensor, kv_cache: torch.Tensor, md: AttentionMetadata,
                rows, out: torch.Tensor) -> None:
        block_size = kv_cache.shape[2]
        rows_t = torch.from_numpy(rows)
        seq_lens = torch.from_numpy(md.seq_lens_host[rows]).long()  # [R']
        max_len = int(seq_lens.max())
        num_blocks = -(-max_len // block_size)
        blocks = md.block_tables[rows_t, :num_blocks].long()
        k, v = self._gather(kv_cache, blocks)  # [R', L, Hkv, D]
        token_idx = torch.from_numpy(md.query_start_loc_host[rows]).long()
        q = query[token_idx]  # [R', Hq, D]
        num_rows = len(rows)
        k_pos = torch.arange(k.shape[1])
        visible = k_pos.unsqueeze(0) < seq_lens.unsqueeze(1)  # [R', L]
        if self.sliding_window is not None:
            visible &= k_pos.unsqueeze(0) > (seq_lens - 1 - self.sliding_window).unsqueeze(1)
        if self.soft_cap is None:
            if k.dtype != torch.float32:
                # torch's CPU SDPA is several times slower on bf16/fp16 than on fp32 for
                # one-query rows (measured: benchmarks/throughput.py); upcast via the workspace.
                k = self.workspace.get("k32", tuple(k.shape), torch.float32).copy_(k)
                v = self.workspace.get("v32", tuple(v.shape), torch.float32).copy_(v)
            res = F.scaled_dot_product_attention(
                q.unsqueeze(2).to(k.dtype), k.transpose(1, 2), v.transpose(1, 2),
                attn_mask=visible[:, None, None, :], scale=self.scale,
                enable_gqa=self.num_heads != self.num_kv_heads,
            )  # [R', Hq, 1, D]
            out[token_idx] = res.view(num_rows, self.num_heads, self.head_size).to(out.dtype)
            return
        group = self.num_heads // self.num_kv_heads
        qg = q.view(num_rows, self.num_kv_heads, group, self.head_size)
        scores = torch.matmul(qg.float(), k.float().permute(0, 2, 3, 1)) * self.scale
        scores = self.soft_cap * torch.tanh(scores / self.soft_cap)
        scores.masked_fill_(~visible[:, None, None, :], float("-inf"))
        probs = torch.softmax(scores, dim=-1)
        res = torch.matmul(probs, v.float().transpose(1, 2))  # [R', Hkv, G, D]
        out[token_idx] = res.reshape(num_rows, self.num_heads, self.head_size).to(out.dtype)


def _length_groups(rows: np.ndarray, seq_lens: np.ndarray, max_groups: int = 8) -> list:
    """Split decode rows into groups of similar context length: each group is padded to its
    own longest row, so short rows don't pay for the longest one in the batch. A new group
    starts where lengths drop below two thirds of the current group's longest."""
    if len(rows) == 0:
        return []
    order = rows[np.argsort(-seq_lens[rows], kind="stable")]
    groups, start = [], 0
    for i in range(1, len(order)):
        if len(groups) < max_groups - 1 and seq_lens[order[i]] * 3 < seq_lens[order[start]] * 2:
            groups.append(order[start:i])
            start = i
    groups.append(order[start:])
    return groups
