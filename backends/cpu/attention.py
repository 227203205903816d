"""CPU attention: plain torch over a [2, N, S, Hkv, D] per-layer cache.

Decode rows (one query each) run in the native C++ kernel (backends/cpu/native.py), which
reads pages in place, and so do requests with a few queries (speculative verification), one
kernel row per query; where it can't be built, decode rows go through SDPA in groups of
similar length. Longer query runs (prefill, chunked prefill) run one by one through SDPA. What
depends only on the batch (row groups, block ids, masks) is planned once per step and shared
by every layer through AttentionMetadata.plan_cache.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from quire.backends.cpu import native
from quire.backends.torch import kv_quant
from quire.backends.torch.attention import AttentionImpl, AttentionMetadata
from quire.backends.torch.kv_quant import KV_QUANT_DTYPES
from quire.backends.torch.workspace import Workspace
from quire.core.sizing import cdiv
from quire.testing.reference import attend

# Requests with up to this many queries run as decode rows in the native kernel (which reads
# each row's pages once per query, so longer chunks go to SDPA).
NATIVE_MAX_QUERIES = 8


@dataclass(slots=True)
class _DecodeGroup:
    token_idx: torch.Tensor  # [R'] int64, the rows' query tokens
    blocks: torch.Tensor  # [R', nb] int64
    visible: torch.Tensor  # [R', nb * S] bool, keys each row may attend to


@dataclass(slots=True)
class _PrefillSeq:
    start: int
    end: int
    seq_len: int
    blocks: torch.Tensor  # [nb] int64
    mask: torch.Tensor  # [Q, seq_len] bool, causal (and windowed)


@dataclass(slots=True)
class _DecodeRows:
    """Every decode row at once, for the native kernel (which needs no padding)."""

    token_idx: torch.Tensor  # [R'] int64
    block_tables: torch.Tensor  # [R', B] int32, contiguous
    seq_lens: torch.Tensor  # [R'] int32


@dataclass(slots=True)
class _Plan:
    decode_rows: _DecodeRows | None
    decode_groups: list[_DecodeGroup]  # for the torch path (empty when native is used)
    prefills: list[_PrefillSeq]
    native: bool  # decode rows go to the native kernel


def _all_native_rows(plan: _Plan, num_tokens: int) -> _DecodeRows | None:
    """plan's decode rows when they are every token of the step, in order, for the native
    kernel; else None."""
    rows = plan.decode_rows
    if rows is not None and plan.native and not plan.prefills and \
            len(rows.token_idx) == num_tokens:
        return rows
    return None


class CpuAttention(AttentionImpl):
    kv_quant_dtypes = KV_QUANT_DTYPES

    def write_kv(self, key: torch.Tensor, value: torch.Tensor, kv_cache: torch.Tensor,
                 slot_mapping: torch.Tensor) -> None:
        if self.kv_quant is not None:
            kv_quant.write(kv_cache[0], slot_mapping, key, self.kv_quant)
            kv_quant.write(kv_cache[1], slot_mapping, value, self.kv_quant)
            return
        flat = kv_cache.view(2, -1, self.num_kv_heads, self.head_size)
        flat[0].index_copy_(0, slot_mapping, key)
        flat[1].index_copy_(0, slot_mapping, value)

    def _plan(self, kv_cache: torch.Tensor, metadata: AttentionMetadata) -> _Plan:
        key = ("cpu", kv_cache.shape[2], self.sliding_window)
        plan = metadata.plan_cache.get(key)
        if plan is None:
            plan = metadata.plan_cache[key] = _make_plan(metadata, kv_cache.shape[2],
                                                         self.sliding_window)
        return plan

    def native_decode_rows(self, kv_cache: torch.Tensor, metadata: AttentionMetadata,
                           num_tokens: int) -> _DecodeRows | None:
        """The native kernel's rows when every token of the step is a decode row, in order
        (no padding, no prefill); else None."""
        return _all_native_rows(self._plan(kv_cache, metadata), num_tokens)

    def forward(self, query: torch.Tensor, kv_cache: torch.Tensor,
                metadata: AttentionMetadata) -> torch.Tensor:
        workspace = metadata.workspace or Workspace()
        plan = self._plan(kv_cache, metadata)
        rows = _all_native_rows(plan, query.shape[0])
        if rows is not None:  # no gather/scatter
            return native.paged_decode(query, kv_cache[0], kv_cache[1], rows.block_tables,
                                       rows.seq_lens, self.scale, self.sliding_window,
                                       self.soft_cap, self.kv_quant)
        rows = plan.decode_rows
        out = torch.empty_like(query)
        if rows is not None and plan.native:
            out[rows.token_idx] = native.paged_decode(
                query[rows.token_idx], kv_cache[0], kv_cache[1], rows.block_tables,
                rows.seq_lens, self.scale, self.sliding_window, self.soft_cap, self.kv_quant)
        else:
            for group in plan.decode_groups:
                self._decode(query, kv_cache, group, workspace, out)
        for seq in plan.prefills:
            out[seq.start : seq.end] = self._prefill(query[seq.start : seq.end], kv_cache, seq,
                                                     workspace)
        return out

    def _gather(self, kv_cache: torch.Tensor, blocks: torch.Tensor,
                workspace: Workspace, dtype: torch.dtype | None = None
                ) -> tuple[torch.Tensor, torch.Tensor]:
        """blocks [..., nb] -> keys, values [..., nb * S, Hkv, D], copied into the workspace
        (an 8-bit cache's rows dequantized to dtype)."""
        flat = blocks.reshape(-1)
        block_shape = tuple(kv_cache.shape[2:])
        k = workspace.get("k", (flat.numel(), *block_shape), kv_cache.dtype)
        v = workspace.get("v", (flat.numel(), *block_shape), kv_cache.dtype)
        torch.index_select(kv_cache[0], 0, flat, out=k)
        torch.index_select(kv_cache[1], 0, flat, out=v)
        if self.kv_quant is not None:
            k = kv_quant.dequantize(k, self.kv_quant, dtype or torch.float32)
            v = kv_quant.dequantize(v, self.kv_quant, dtype or torch.float32)
        shape = (*blocks.shape[:-1], -1, self.num_kv_heads, self.head_size)
        return k.view(shape), v.view(shape)

    def _prefill(self, q: torch.Tensor, kv_cache: torch.Tensor, seq: _PrefillSeq,
                 workspace: Workspace) -> torch.Tensor:
        k, v = self._gather(kv_cache, seq.blocks, workspace, q.dtype)
        k, v = k[: seq.seq_len], v[: seq.seq_len]
        if self.soft_cap is not None:
            return attend(q, k, v, seq.seq_len - q.shape[0], self.scale, self.sliding_window,
                          self.soft_cap).to(q.dtype)
        out = F.scaled_dot_product_attention(
            q.transpose(0, 1).unsqueeze(0), k.transpose(0, 1).unsqueeze(0),
            v.transpose(0, 1).unsqueeze(0), attn_mask=seq.mask, scale=self.scale,
            enable_gqa=self.num_heads != self.num_kv_heads,
        )  # [1, Hq, Q, D]
        return out[0].transpose(0, 1)

    def _decode(self, query: torch.Tensor, kv_cache: torch.Tensor, group: _DecodeGroup,
                workspace: Workspace, out: torch.Tensor) -> None:
        k, v = self._gather(kv_cache, group.blocks, workspace,
                            query.dtype)  # [R', L, Hkv, D]
        q = query[group.token_idx]  # [R', Hq, D]
        num_rows = q.shape[0]
        visible = group.visible
        if self.soft_cap is None:
            if k.dtype != torch.float32:
                # torch's CPU SDPA is several times slower on bf16/fp16 than on fp32 for
                # one-query rows (measured: benchmarks/throughput.py); upcast via the workspace.
                k = workspace.get("k32", tuple(k.shape), torch.float32).copy_(k)
                v = workspace.get("v32", tuple(v.shape), torch.float32).copy_(v)
            res = F.scaled_dot_product_attention(
                q.unsqueeze(2).to(k.dtype), k.transpose(1, 2), v.transpose(1, 2),
                attn_mask=visible[:, None, None, :], scale=self.scale,
                enable_gqa=self.num_heads != self.num_kv_heads,
            )  # [R', Hq, 1, D]
            out[group.token_idx] = res.view(num_rows, self.num_heads, self.head_size).to(out.dtype)
            return
        group_size = self.num_heads // self.num_kv_heads
        qg = q.view(num_rows, self.num_kv_heads, group_size, self.head_size)
        scores = torch.matmul(qg.float(), k.float().permute(0, 2, 3, 1)) * self.scale
        scores = self.soft_cap * torch.tanh(scores / self.soft_cap)
        scores.masked_fill_(~visible[:, None, None, :], float("-inf"))
        probs = torch.softmax(scores, dim=-1)
        res = torch.matmul(probs, v.float().transpose(1, 2))  # [R', Hkv, G, D]
        out[group.token_idx] = res.reshape(num_rows, self.num_heads,
                                           self.head_size).to(out.dtype)


def _make_plan(md: AttentionMetadata, block_size: int, sliding_window: int | None) -> _Plan:
    qsl, seq_lens, num_reqs = md.query_start_loc_host, md.seq_lens_host, md.num_reqs
    query_lens = qsl[1 : num_reqs + 1] - qsl[:num_reqs]
    use_native = native.available()
    # With the native kernel, a request with a few queries (speculative verification, a short
    # chunk) runs as that many decode rows over its own block table, each seeing the keys up
    # to its position: no gather of its pages, no mask.
    if use_native and num_reqs and md.max_query_len == 1:
        # Every request decodes one token (token i is request i's): the metadata's own rows,
        # without the gathers below (a batch-1 step runs this with every Python cost cold).
        return _Plan(_DecodeRows(token_idx=torch.arange(num_reqs),
                                 block_tables=md.block_tables[:num_reqs],
                                 seq_lens=md.seq_lens[:num_reqs]), [], [], True)
    short = query_lens <= (NATIVE_MAX_QUERIES if use_native else 1)
    decode = short.nonzero()[0]
    decode_rows = None
    if len(decode):
        counts = query_lens[decode]
        req = np.repeat(decode, counts)  # each row's request, in token order
        offset = np.arange(len(req)) - np.repeat(np.cumsum(counts) - counts, counts)
        decode_rows = _DecodeRows(
            token_idx=torch.from_numpy(qsl[req] + offset).long(),
            block_tables=md.block_tables[torch.from_numpy(req)].contiguous(),
            seq_lens=torch.from_numpy(
                (seq_lens[req] - np.repeat(counts, counts) + 1 + offset).astype(np.int32)),
        )
    groups = []
    for rows in [] if use_native else _length_groups(decode, seq_lens):  # one query each
        lens = torch.from_numpy(seq_lens[rows]).long()  # [R']
        num_blocks = cdiv(int(lens.max()), block_size)
        k_pos = torch.arange(num_blocks * block_size).unsqueeze(0)
        visible = k_pos < lens.unsqueeze(1)
        if sliding_window is not None:
            visible &= k_pos > (lens - 1 - sliding_window).unsqueeze(1)
        groups.append(_DecodeGroup(
            token_idx=torch.from_numpy(qsl[rows]).long(),
            blocks=md.block_tables[torch.from_numpy(rows), :num_blocks].long(),
            visible=visible,
        ))
    prefills = []
    for i in (~short).nonzero()[0].tolist():
        start, end, seq_len = int(qsl[i]), int(qsl[i + 1]), int(seq_lens[i])
        q_pos = torch.arange(seq_len - (end - start), seq_len).unsqueeze(1)
        k_pos = torch.arange(seq_len).unsqueeze(0)
        mask = k_pos <= q_pos
        if sliding_window is not None:
            mask &= k_pos > q_pos - sliding_window
        blocks = md.block_tables[i, : cdiv(seq_len, block_size)].long()
        prefills.append(_PrefillSeq(start, end, seq_len, blocks, mask))
    return _Plan(decode_rows, groups, prefills, use_native)


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
