"""SchedulerOutput -> Batch: flat numpy arrays in the one vocabulary every backend reads.

Packed ragged layout for R requests and T tokens (request i owns tokens
query_start_loc[i]:query_start_loc[i+1], the last ones of its seq_lens[i] positions):

    input_ids      [T]       int32   token ids
    positions      [T]       int32   position of each token in its sequence
    slot_mapping   [T]       int64   block_id * block_size + offset where its K/V goes
    query_start_loc[R+1]     int32   prefix sums of the scheduled token counts
    seq_lens       [R]       int32   context length after this step (computed + new)
    block_tables   [R, B]    int32   each request's blocks, padded with the null block 0
    logits_indices [L]       int32   tokens whose logits are sampled: the last token of
                                     each of the S requests that finish catching up in
                                     this step, and with speculative decoding its k draft
                                     positions before it (L = S + drafts)
    logits_row_start [S+1]   int32   sampled request i owns logits rows
                                     logits_row_start[i]:logits_row_start[i+1]
    draft_token_ids [L]      int32   the draft token each row verifies (the next input
                                     token), -1 on each request's last row

With a hybrid KV cache (quire.core.kv_groups), block_tables and slot_mapping are group 0's;
extra_block_tables / extra_slot_mappings hold groups 1.. in the same shapes (a windowed
group's table has the null block where blocks fell out of the window).

Padding to a backend's buckets adds tokens with input id 0, position 0 and slot 0 (the
null block) and requests with zero-length queries and seq_lens 0.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from quire.core.kv_cache_manager import KVCacheManager
from quire.core.kv_groups import HybridKVCacheManager
from quire.core.request import Request
from quire.core.scheduler import SchedulerOutput


@dataclass(slots=True)
class SamplingBatch:
    """Per-row sampling parameters for the L logits rows, in logits_indices order (a
    request verifying k drafts has k + 1 rows, one per output step: row j's output_steps,
    penalties and banned tokens count the j drafts before it)."""

    temperature: np.ndarray  # [S] float32; 0 means greedy
    top_p: np.ndarray  # [S] float32
    top_k: np.ndarray  # [S] int32; 0 means off
    min_p: np.ndarray  # [S] float32
    presence_penalty: np.ndarray  # [S] float32
    frequency_penalty: np.ndarray  # [S] float32
    repetition_penalty: np.ndarray  # [S] float32
    seeds: np.ndarray  # [S] int64; meaningful where has_seed
    has_seed: np.ndarray  # [S] bool
    output_steps: np.ndarray  # [S] int64 number of tokens already generated
    num_logprobs: np.ndarray  # [S] int32; -1 means no logprobs
    # Penalty inputs, only when some row uses a penalty: token ids padded with -1.
    prompt_token_ids: np.ndarray | None  # [S, P] int64
    output_token_ids: np.ndarray | None  # [S, O] int64
    # Tokens to ban (EOS/stop ids before min_tokens): parallel (row, token id) arrays.
    suppress_rows: np.ndarray  # [K] int64
    suppress_token_ids: np.ndarray  # [K] int64
    # Structured outputs: [S, cdiv(V, 32)] int32, bit t % 32 of word t // 32 set where token
    # t is allowed (all bits set in unconstrained rows); None when no row is constrained.
    token_bitmask: np.ndarray | None = None

    @property
    def num_rows(self) -> int:
        return len(self.temperature)

    @property
    def all_greedy(self) -> bool:
        return bool(np.all(self.temperature < 1e-5))

    @property
    def max_num_logprobs(self) -> int:
        return int(self.num_logprobs.max(initial=-1))


@dataclass(slots=True)
class Batch:
    input_ids: np.ndarray
    positions: np.ndarray
    slot_mapping: np.ndarray
    query_start_loc: np.ndarray
    seq_lens: np.ndarray
    block_tables: np.ndarray
    logits_indices: np.ndarray
    sampling: SamplingBatch
    num_reqs: int  # real requests (rows past this are padding)
    num_tokens: int  # real tokens (entries past this are padding)
    max_query_len: int
    max_seq_len: int
    block_size: int
    # Which scheduled requests sample this step (indices into SchedulerOutput.requests), in
    # logits row order.
    sampled_req_indices: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    logits_row_start: np.ndarray = field(default_factory=lambda: np.zeros(1, np.int32))
    draft_token_ids: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int32))
    extra_block_tables: tuple[np.ndarray, ...] = ()
    extra_slot_mappings: tuple[np.ndarray, ...] = ()

    @property
    def num_kv_groups(self) -> int:
        return 1 + len(self.extra_block_tables)

    def group_tables(self, group: int) -> tuple[np.ndarray, np.ndarray]:
        """(block_tables, slot_mapping) of a KV group (0: the fields above)."""
        if group == 0:
            return self.block_tables, self.slot_mapping
        return self.extra_block_tables[group - 1], self.extra_slot_mappings[group - 1]

    @property
    def has_drafts(self) -> bool:
        return len(self.logits_indices) > len(self.sampled_req_indices)


def build_batch(
    out: SchedulerOutput,
    kv_cache: KVCacheManager | HybridKVCacheManager,
    token_buckets: Sequence[int] = (),
    request_buckets: Sequence[int] = (),
    block_table_width: int | None = None,
) -> Batch:
    """One step's Batch. Token and request counts pad up to the smallest declared bucket
    (padding writes to the null block); block_table_width fixes the tables' column count
    (None: the longest request's block count)."""
    requests = out.requests
    num_reqs = len(requests)
    block_size = kv_cache.block_size
    num_new = np.asarray(out.num_new_tokens, dtype=np.int32)
    num_computed = np.fromiter((r.num_computed_tokens for r in requests), np.int32, num_reqs)
    num_tokens = int(num_new.sum())
    padded_tokens = _bucket(num_tokens, token_buckets)
    padded_reqs = _bucket(num_reqs, request_buckets)

    query_start_loc = np.zeros(padded_reqs + 1, dtype=np.int32)
    np.cumsum(num_new, out=query_start_loc[1 : num_reqs + 1])
    query_start_loc[num_reqs + 1 :] = num_tokens
    seq_lens = np.zeros(padded_reqs, dtype=np.int32)
    seq_lens[:num_reqs] = num_computed + num_new

    req_of_token = np.repeat(np.arange(num_reqs, dtype=np.int32), num_new)
    positions = np.zeros(padded_tokens, dtype=np.int32)
    positions[:num_tokens] = (
        np.arange(num_tokens, dtype=np.int32)
        - np.repeat(query_start_loc[:num_reqs], num_new)
        + np.repeat(num_computed, num_new)
    )
    input_ids = np.zeros(padded_tokens, dtype=np.int32)
    ids: list[int] = []
    drafts = out.draft_token_ids or [[]] * num_reqs
    for r, c, n, d in zip(requests, num_computed.tolist(), out.num_new_tokens, drafts):
        ids.extend(r.all_token_ids[c : c + n - len(d)])
        ids.extend(d)
    input_ids[:num_tokens] = ids

    tables = [_tables([kv_cache.get_block_ids(r.request_id, g) for r in requests],
                      padded_reqs, padded_tokens, block_table_width, req_of_token,
                      positions[:num_tokens], block_size)
              for g in range(kv_cache.num_groups)]
    block_tables, slot_mapping = tables[0]

    # A request samples when this step brings it level with all its tokens (and drafts);
    # it samples its last position and each draft position.
    num_drafts = np.fromiter((len(d) for d in drafts), np.int32, num_reqs)
    is_sampling = seq_lens[:num_reqs] == np.fromiter(
        (r.num_tokens for r in requests), np.int32, num_reqs
    ) + num_drafts
    sampled_idx = np.flatnonzero(is_sampling)
    rows = num_drafts[sampled_idx] + 1
    row_start = np.zeros(len(sampled_idx) + 1, dtype=np.int32)
    np.cumsum(rows, out=row_start[1:])
    first_row_token = query_start_loc[sampled_idx + 1] - rows
    logits_indices = (np.repeat(first_row_token - row_start[:-1], rows)
                      + np.arange(row_start[-1], dtype=np.int32)).astype(np.int32)
    if num_drafts.any():
        draft_rows: list[int] = []
        for i in sampled_idx.tolist():
            draft_rows.extend(drafts[i])
            draft_rows.append(-1)
        draft_token_ids = np.asarray(draft_rows, dtype=np.int32)
    else:
        draft_token_ids = np.full(len(sampled_idx), -1, dtype=np.int32)
    sampled = [requests[i] for i in sampled_idx.tolist()]
    return Batch(
        input_ids=input_ids,
        positions=positions,
        slot_mapping=slot_mapping,
        query_start_loc=query_start_loc,
        seq_lens=seq_lens,
        block_tables=block_tables,
        logits_indices=logits_indices,
        sampling=build_sampling_batch(sampled, [drafts[i] for i in sampled_idx.tolist()]),
        num_reqs=num_reqs,
        num_tokens=num_tokens,
        max_query_len=int(num_new.max(initial=0)),
        max_seq_len=int(seq_lens.max(initial=0)),
        block_size=block_size,
        sampled_req_indices=sampled_idx,
        logits_row_start=row_start,
        draft_token_ids=draft_token_ids,
        extra_block_tables=tuple(t for t, _ in tables[1:]),
        extra_slot_mappings=tuple(s for _, s in tables[1:]),
    )


def _tables(block_id_lists: list[list[int]], padded_reqs: int, padded_tokens: int,
            width: int | None, req_of_token: np.ndarray, pos: np.ndarray, block_size: int
            ) -> tuple[np.ndarray, np.ndarray]:
    """(block_tables, slot_mapping) of one KV group: each request's blocks padded with the
    null block to the longest (or the fixed width), and each real token's slot."""
    max_blocks = max((len(b) for b in block_id_lists), default=1) or 1
    if width is not None:
        if max_blocks > width:
            raise ValueError(f"a request holds {max_blocks} blocks, more than the fixed "
                             f"block-table width {width}")
        max_blocks = width
    block_tables = np.zeros((padded_reqs, max_blocks), dtype=np.int32)
    for i, block_ids in enumerate(block_id_lists):
        block_tables[i, : len(block_ids)] = block_ids
    slot_mapping = np.zeros(padded_tokens, dtype=np.int64)
    slot_mapping[: len(pos)] = (
        block_tables[req_of_token, pos // block_size].astype(np.int64) * block_size
        + pos % block_size
    )
    return block_tables, slot_mapping


def build_sampling_batch(requests: Sequence[Request],
                         drafts: Sequence[Sequence[int]] | None = None) -> SamplingBatch:
    """Rows for the requests' next tokens; a request with k drafts gets k + 1 rows, row j
    for the output step after its j first drafts."""
    drafts = drafts if drafts is not None else [()] * len(requests)
    rows_per_req = np.fromiter((len(d) + 1 for d in drafts), np.int64, len(requests))
    req_of_row = np.repeat(np.arange(len(requests)), rows_per_req)
    step_of_row = np.arange(len(req_of_row)) - np.repeat(np.cumsum(rows_per_req) -
                                                         rows_per_req, rows_per_req)
    params = [r.sampling_params for r in requests]
    n = len(params)

    def col(name: str, dtype: type) -> np.ndarray:
        return np.fromiter((getattr(p, name) for p in params), dtype, n)[req_of_row]

    presence = col("presence_penalty", np.float32)
    frequency = col("frequency_penalty", np.float32)
    repetition = col("repetition_penalty", np.float32)
    any_penalty = bool(np.any(presence != 0) or np.any(frequency != 0) or np.any(repetition != 1))
    prompt_ids = output_ids = None
    if any_penalty:
        prompt_ids = _pad_rows([requests[i].prompt_token_ids for i in req_of_row.tolist()])
        output_ids = _pad_rows([requests[i].output_token_ids + list(drafts[i][:j])
                                for i, j in zip(req_of_row.tolist(), step_of_row.tolist())])
    output_steps = np.fromiter((r.num_output_tokens for r in requests), np.int64,
                               n)[req_of_row] + step_of_row
    rows, banned = [], []
    for row, (i, step) in enumerate(zip(req_of_row.tolist(), output_steps.tolist())):
        r, p = requests[i], params[i]
        if step < p.min_tokens:
            stops = list(p.stop_token_ids)
            if r.eos_token_id is not None and not p.ignore_eos:
                stops.append(r.eos_token_id)
            rows.extend([row] * len(stops))
            banned.extend(stops)
    return SamplingBatch(
        temperature=col("temperature", np.float32),
        top_p=col("top_p", np.float32),
        top_k=col("top_k", np.int32),
        min_p=col("min_p", np.float32),
        presence_penalty=presence,
        frequency_penalty=frequency,
        repetition_penalty=repetition,
        seeds=np.fromiter((p.seed if p.seed is not None else 0 for p in params), np.int64,
                          n)[req_of_row],
        has_seed=np.fromiter((p.seed is not None for p in params), bool, n)[req_of_row],
        output_steps=output_steps,
        num_logprobs=np.fromiter(
            (-1 if p.logprobs is None else p.logprobs for p in params), np.int32, n
        )[req_of_row],
        prompt_token_ids=prompt_ids,
        output_token_ids=output_ids,
        suppress_rows=np.asarray(rows, dtype=np.int64),
        suppress_token_ids=np.asarray(banned, dtype=np.int64),
    )


def _pad_rows(rows: Sequence[Sequence[int]]) -> np.ndarray:
    width = max((len(r) for r in rows), default=0) or 1
    out = np.full((len(rows), width), -1, dtype=np.int64)
    for i, r in enumerate(rows):
        out[i, : len(r)] = r
    return out


def _bucket(n: int, buckets: Sequence[int]) -> int:
    """Smallest declared bucket that holds n; n itself when no bucket is declared."""
    if not buckets:
        return n
    for b in sorted(buckets):
        if b >= n:
            return b
    raise ValueError(f"{n} exceeds the largest shape bucket {max(buckets)}")
