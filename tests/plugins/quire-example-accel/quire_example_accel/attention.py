"""Head-major paged KV: one layer's cache is [2, Hkv, N, S, D] (quire's cpu uses
[2, N, S, Hkv, D]). Attention gathers per head with a plain softmax."""

from __future__ import annotations

import torch

from quire.backends.torch.attention import AttentionImpl, AttentionMetadata


class HeadMajorAttention(AttentionImpl):
    @staticmethod
    def kv_cache_shape(num_blocks, block_size, num_kv_heads, head_size):
        return (2, num_kv_heads, num_blocks, block_size, head_size)

    def write_kv(self, key, value, kv_cache, slot_mapping):
        flat = kv_cache.view(2, self.num_kv_heads, -1, self.head_size)
        flat[0][:, slot_mapping] = key.transpose(0, 1)
        flat[1][:, slot_mapping] = value.transpose(0, 1)

    def forward(self, query, kv_cache, md: AttentionMetadata):
        out = torch.empty_like(query)
        block_size = kv_cache.shape[3]
        group = self.num_heads // self.num_kv_heads
        qsl, seq_lens = md.query_start_loc_host, md.seq_lens_host
        for i in range(md.num_reqs):
            start, end, seq_len = int(qsl[i]), int(qsl[i + 1]), int(seq_lens[i])
            if end == start:
                continue
            blocks = md.block_tables[i, : -(-seq_len // block_size)].long()
            k = kv_cache[0][:, blocks].reshape(self.num_kv_heads, -1, self.head_size)[:, :seq_len]
            v = kv_cache[1][:, blocks].reshape(self.num_kv_heads, -1, self.head_size)[:, :seq_len]
            q = query[start:end].transpose(0, 1).float()  # [Hq, Q, D]
            k = k.repeat_interleave(group, 0).float()
            v = v.repeat_interleave(group, 0).float()
            scores = q @ k.transpose(1, 2) * self.scale
            q_pos = torch.arange(seq_len - (end - start), seq_len).unsqueeze(1)
            mask = torch.arange(seq_len).unsqueeze(0) <= q_pos
            if self.sliding_window is not None:
                mask &= torch.arange(seq_len).unsqueeze(0) > q_pos - self.sliding_window
            scores = scores.masked_fill(~mask, float("-inf"))
            out[start:end] = (torch.softmax(scores, -1) @ v).transpose(0, 1).to(out.dtype)
        return out
