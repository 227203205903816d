"""Paged KV cache bookkeeping per request: allocation, prefix-cache lookup, freeing."""

from __future__ import annotations

from dataclasses import dataclass

from quire.core.block_pool import BlockPool, KVBlock
from quire.core.hashing import BlockHash
from quire.core.request import Request
from quire.core.sizing import cdiv


@dataclass(slots=True)
class KVCacheStats:
    num_blocks: int
    num_used_blocks: int
    num_free_blocks: int
    usage: float
    prefix_cache_queries: int
    prefix_cache_hits: int

    @property
    def prefix_cache_hit_rate(self) -> float:
        if not self.prefix_cache_queries:
            return 0.0
        return self.prefix_cache_hits / self.prefix_cache_queries


class KVCacheManager:
    """window: every layer attends to at most this many positions (None: full attention).
    Then a request's blocks that fall wholly before the window of its next query are given
    back (to the prefix cache, when cached) and its table holds the null block there."""

    def __init__(self, num_blocks: int, block_size: int, enable_prefix_caching: bool = True,
                 window: int | None = None, pool: BlockPool | None = None, group: int = 0):
        """pool, group: a shared pool (quire.core.kv_groups), and this manager's group there,
        which keeps its prefix-cache entries apart from other groups'."""
        self.block_size = block_size
        self.window = window
        self.group = group
        self.enable_prefix_caching = enable_prefix_caching
        self.pool = pool or BlockPool(num_blocks, enable_caching=enable_prefix_caching)
        self.req_to_blocks: dict[str, list[KVBlock]] = {}
        # Block ids alongside the blocks, so building a batch never touches KVBlock objects.
        self.req_to_block_ids: dict[str, list[int]] = {}
        # Leading blocks of each request already entered into the prefix cache. Tracked
        # rather than derived from num_computed_tokens, which rolls back when speculative
        # drafts are rejected.
        self.req_to_num_cached: dict[str, int] = {}
        # Leading blocks of each request given back because they fell out of the window.
        self.req_to_num_freed: dict[str, int] = {}
        self.prefix_cache_queries = 0  # tokens looked up
        self.prefix_cache_hits = 0  # tokens found

    @property
    def num_usable_blocks(self) -> int:
        return self.pool.num_usable_blocks

    def num_blocks_for(self, num_tokens: int) -> int:
        return cdiv(num_tokens, self.block_size)

    def get_computed_blocks(self, request: Request) -> tuple[list[KVBlock], int]:
        """Longest cached prefix of a request that has not started: (blocks, num_tokens).

        The hit is capped at num_tokens - 1 so the last token is always computed (its logits
        are needed)."""
        if not self.enable_prefix_caching:
            return [], 0
        max_blocks = (request.num_tokens - 1) // self.block_size
        hits: list[KVBlock] = []
        for block_hash in request.block_hashes[:max_blocks]:
            block = self.pool.get_cached_block(self.cache_key(block_hash))
            if block is None:
                break
            hits.append(block)
        self.prefix_cache_queries += request.num_tokens
        self.prefix_cache_hits += len(hits) * self.block_size
        return hits, len(hits) * self.block_size

    def allocate_slots(
        self,
        request: Request,
        num_new_tokens: int,
        new_computed_blocks: list[KVBlock] | None = None,
    ) -> list[KVBlock] | None:
        """Make room for num_new_tokens after the request's computed (and newly hit) tokens.

        Returns the newly allocated blocks, or None (nothing changed) when the pool can't
        supply them. Full blocks are entered into the prefix cache right away: a request
        scheduled later in the same step may hit them, which is safe because every layer
        writes the whole batch's K/V before any attention reads it."""
        new_computed_blocks = new_computed_blocks or []
        if (self.num_blocks_needed(request, num_new_tokens, new_computed_blocks)
                > self.pool.num_free_blocks):
            self.forget_if_empty(request.request_id)
            return None
        return self.take_slots(request, num_new_tokens, new_computed_blocks)

    def take_slots(self, request: Request, num_new_tokens: int,
                   new_computed_blocks: list[KVBlock]) -> list[KVBlock]:
        """allocate_slots once num_blocks_needed has been checked against the pool."""
        blocks = self.req_to_blocks[request.request_id]
        block_ids = self.req_to_block_ids[request.request_id]
        num_computed = request.num_computed_tokens + len(new_computed_blocks) * self.block_size
        num_total = num_computed + num_new_tokens
        num_new_blocks = self.num_blocks_for(num_total) - len(blocks) - len(new_computed_blocks)
        null = self.pool.null_block
        self.pool.touch(b for b in new_computed_blocks if b is not null)
        blocks.extend(new_computed_blocks)
        new_blocks = self.pool.get_new_blocks(max(num_new_blocks, 0))
        blocks.extend(new_blocks)
        block_ids.extend(b.block_id for b in new_computed_blocks)
        block_ids.extend(b.block_id for b in new_blocks)
        if self.enable_prefix_caching:
            # Only blocks whose tokens are all known (hashed) and computed by this step.
            num_full = min(num_total // self.block_size, len(request.block_hashes))
            start = self.req_to_num_cached.get(request.request_id,
                                               num_computed // self.block_size)
            for i in range(start, num_full):
                if blocks[i] is not self.pool.null_block:
                    self.pool.cache_block(blocks[i], self.cache_key(request.block_hashes[i]))
            self.req_to_num_cached[request.request_id] = max(start, num_full)
        return new_blocks

    def cache_key(self, block_hash: BlockHash) -> BlockHash:
        """The prefix-cache key of a block hash in this manager's group."""
        return block_hash if self.group == 0 else hash((self.group, block_hash))

    def num_blocks_needed(self, request: Request, num_new_tokens: int,
                          new_computed_blocks: list[KVBlock]) -> int:
        """Blocks these slots take off the free list (new ones and hits on free blocks).
        Gives back the blocks that fell out of the window first, as allocating would."""
        blocks = self.req_to_blocks.setdefault(request.request_id, [])
        block_ids = self.req_to_block_ids.setdefault(request.request_id, [])
        num_computed = request.num_computed_tokens + len(new_computed_blocks) * self.block_size
        if self.window is not None and blocks:
            self._free_outside_window(request.request_id, blocks, block_ids, num_computed)
        num_new_blocks = (self.num_blocks_for(num_computed + num_new_tokens) - len(blocks)
                          - len(new_computed_blocks))
        num_hits_on_free = sum(1 for b in new_computed_blocks if b.ref_cnt == 0)
        return max(num_new_blocks, 0) + num_hits_on_free

    def forget_if_empty(self, request_id: str) -> None:
        """Drop the bookkeeping of a request that holds no block (its allocation failed)."""
        if not self.req_to_blocks.get(request_id):
            self._forget(request_id)

    def free(self, request: Request) -> None:
        """Release a request's blocks, last block first, so a sequence's tail is evicted
        before its (more shareable) prefix."""
        blocks = self.req_to_blocks.pop(request.request_id, None)
        self.req_to_block_ids.pop(request.request_id, None)
        self.req_to_num_cached.pop(request.request_id, None)
        self.req_to_num_freed.pop(request.request_id, None)
        if blocks:
            self.pool.free_blocks(b for b in reversed(blocks) if b is not self.pool.null_block)

    def _free_outside_window(self, request_id: str, blocks: list[KVBlock],
                             block_ids: list[int], num_computed: int) -> None:
        """The next query (position num_computed) sees positions from
        num_computed - window + 1 on: the blocks wholly before that go back to the pool."""
        assert self.window is not None
        first_needed = min(max(num_computed - self.window + 1, 0) // self.block_size,
                           len(blocks))
        done = self.req_to_num_freed.get(request_id, 0)
        if first_needed <= done:
            return
        null = self.pool.null_block
        stale = [i for i in range(done, first_needed) if blocks[i] is not null]
        self.pool.free_blocks(blocks[i] for i in reversed(stale))
        for i in stale:
            blocks[i] = null
            block_ids[i] = null.block_id
        self.req_to_num_freed[request_id] = first_needed

    num_groups = 1  # one table for every layer (kv_groups.HybridKVCacheManager: several)

    def get_block_ids(self, request_id: str, group: int = 0) -> list[int]:
        assert group == 0, "a KVCacheManager is one group"
        return self.req_to_block_ids.get(request_id, [])

    def stats(self) -> KVCacheStats:
        free = self.pool.num_free_blocks
        return KVCacheStats(
            num_blocks=self.pool.num_usable_blocks,
            num_used_blocks=self.pool.num_usable_blocks - free,
            num_free_blocks=free,
            usage=self.pool.usage(),
            prefix_cache_queries=self.prefix_cache_queries,
            prefix_cache_hits=self.prefix_cache_hits,
        )

    def _forget(self, request_id: str) -> None:
        self.req_to_num_freed.pop(request_id, None)
        self.req_to_blocks.pop(request_id, None)
        self.req_to_block_ids.pop(request_id, None)
        self.req_to_num_cached.pop(request_id, None)
