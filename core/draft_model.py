"""The draft-model proposer: a smaller model with the same tokenizer, run by a second
executor of the same backend, with its own paged KV cache and block tables kept here.

Each step, for the requests that draft: one batch brings the draft model's cache level with
each request's tokens (chunked to the token budget; a request still catching up drafts
nothing this step) and samples the first draft greedily, then k - 1 single-token batches
sample the rest. Drafts are greedy (one-hot q), which keeps the verification exact
(core/spec_decode.py). Draft K/V past what the target accepted is simply recomputed: the
draft's computed length falls back to the longest common prefix of what it ran and the
request's tokens now.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

from quire.core.batch import build_batch
from quire.core.executor import Executor
from quire.core.kv_cache_manager import KVCacheManager
from quire.core.request import Request
from quire.core.sampling_params import SamplingParams
from quire.core.scheduler import SchedulerOutput
from quire.core.sizing import block_table_width
from quire.core.spec_decode import Proposer

logger = logging.getLogger(__name__)

_GREEDY = SamplingParams(temperature=0, ignore_eos=True)


class DraftSequence:
    """A request as the draft model sees it: the tokens it has run (the target's, then its
    own drafts) and how many of them have K/V in the draft cache. Quacks like the parts of
    Request that build_batch and KVCacheManager read."""

    __slots__ = ("request_id", "all_token_ids", "num_computed_tokens", "block_hashes")
    # What build_sampling_batch reads: greedy rows, nothing banned or penalized.
    sampling_params = _GREEDY
    eos_token_id = None
    num_output_tokens = 0

    def __init__(self, request_id: str) -> None:
        self.request_id = request_id
        self.all_token_ids: list[int] = []
        self.num_computed_tokens = 0
        self.block_hashes: list = []

    @property
    def num_tokens(self) -> int:
        return len(self.all_token_ids)

    def sync(self, tokens: list[int]) -> None:
        """Take the request's tokens now; K/V stays valid up to the common prefix, short of
        the last token, whose logits give the next draft. (The draft may already have run
        it: when the scheduler dropped this request's drafts for want of KV space, the
        target's token equals the first draft the draft model computed.)"""
        old = self.all_token_ids
        n = min(len(old), len(tokens) - 1, self.num_computed_tokens)
        if n and old[n - 1] != tokens[n - 1]:  # rare: search where they part
            n = next(i for i, (a, b) in enumerate(zip(old[:n], tokens[:n])) if a != b)
        self.num_computed_tokens = n
        self.all_token_ids = list(tokens)


class DraftModelProposer(Proposer):
    def __init__(self, executor: Executor, num_blocks: int, block_size: int,
                 max_model_len: int, max_num_batched_tokens: int, vocab_size: int) -> None:
        self.executor = executor
        caps = executor.capabilities()
        self.kv = KVCacheManager(num_blocks, block_size, enable_prefix_caching=False)
        self.max_model_len = max_model_len
        self.budget = max_num_batched_tokens
        self.vocab_size = vocab_size  # the target's: drafts beyond it are cut
        self._buckets = (caps.token_buckets, caps.request_buckets)
        self._width = block_table_width(max_model_len, block_size, num_blocks) \
            if caps.fixed_block_table_width else None
        self.seqs: dict[str, DraftSequence] = {}

    def propose(self, requests: Sequence[Request], num_drafts: Sequence[int]
                ) -> list[list[int]]:
        drafts: dict[str, list[int]] = {r.request_id: [] for r in requests}
        want = {r.request_id: min(k, self.max_model_len - r.num_tokens)
                for r, k in zip(requests, num_drafts)}
        # Step 1: catch up (within the token budget) and sample each first draft.
        plan = SchedulerOutput()
        budget = self.budget
        for r in requests:
            if want[r.request_id] <= 0 or budget <= 0:
                continue
            seq = self.seqs.get(r.request_id) or self.seqs.setdefault(
                r.request_id, DraftSequence(r.request_id))
            seq.sync(r.all_token_ids)
            n = min(seq.num_tokens - seq.num_computed_tokens, budget)
            if self.kv.allocate_slots(seq, n) is None:
                self.forget([r.request_id])  # no room: this request drafts nothing now
                continue
            plan.requests.append(seq)
            plan.num_new_tokens.append(n)
            plan.draft_token_ids.append([])
            budget -= n
        active = self._run(plan)
        for seq, token in active:
            drafts[seq.request_id].append(token)
        # Steps 2..k: one token each for the requests that want more.
        while True:
            plan = SchedulerOutput()
            for seq, token in active:
                if len(drafts[seq.request_id]) >= want[seq.request_id] or \
                        token >= self.vocab_size:
                    continue
                seq.all_token_ids.append(token)
                if self.kv.allocate_slots(seq, 1) is None:
                    seq.all_token_ids.pop()
                    continue
                plan.requests.append(seq)
                plan.num_new_tokens.append(1)
                plan.draft_token_ids.append([])
            if not plan.requests:
                break
            active = self._run(plan)
            for seq, token in active:
                drafts[seq.request_id].append(token)
        return [[t for t in drafts[r.request_id] if t < self.vocab_size][: want[r.request_id]]
                if r.request_id in drafts else [] for r in requests]

    def _run(self, plan: SchedulerOutput) -> list[tuple[DraftSequence, int]]:
        """Run one draft batch; returns (sequence, greedy token) for the sampled ones."""
        if not plan.requests:
            return []
        batch = build_batch(plan, self.kv, *self._buckets, self._width)  # type: ignore[arg-type]
        sampled = self.executor.execute(batch).sampled_token_ids.tolist()
        for seq, n in zip(plan.requests, plan.num_new_tokens):
            seq.num_computed_tokens += n
        return [(plan.requests[i], t) for i, t in zip(batch.sampled_req_indices.tolist(),
                                                      sampled)]

    def forget(self, request_ids: Sequence[str]) -> None:
        for rid in request_ids:
            seq = self.seqs.pop(rid, None)
            if seq is not None:
                self.kv.free(seq)  # type: ignore[arg-type]

    def shutdown(self) -> None:
        self.forget(list(self.seqs))
        self.executor.shutdown()
