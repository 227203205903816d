"""Hybrid KV cache: layers with different attention windows keep separate block pools.

A model that mixes full-attention layers with sliding-window layers (Gemma 2: 1:1, Gemma 3:
1 global per 5 local) would otherwise keep every block of every layer, though a local layer
reads only the last `window` positions. Here the layers form KV groups by window; each group
has its own pool and block table per request (quire.core.kv_cache_manager), and a windowed
group gives back the blocks that fall out of its window. Group 0 is the full-attention one,
so its table bounds what a request can hold; the windowed pools are sized to what the
running requests can ever need at once, and the rest of the memory goes to group 0.

A backend opts in with Capabilities.hybrid_kv_cache; it then gets the groups in
allocate_kv_cache and reads, for layer l, the block table and slot mapping of group
layer_group[l] (Batch.group_tables)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from quire.core.block_pool import KVBlock
from quire.core.kv_cache_manager import KVCacheManager, KVCacheStats
from quire.core.request import Request
from quire.core.sizing import cdiv


@dataclass(frozen=True, slots=True)
class KVCacheGroup:
    """Layers that share one block table: their window (None: full attention) and how many
    blocks (block 0 the null block) each of those layers' caches holds."""

    layers: tuple[int, ...]
    window: int | None
    num_blocks: int


def layer_groups(layer_windows: Sequence[int | None]) -> list[tuple[tuple[int, ...], int | None]]:
    """(layers, window) per group for per-layer windows: full-attention layers first, then
    one group per window size. A single entry when every layer has the same window."""
    windows = sorted(set(layer_windows), key=lambda w: (w is not None, w or 0))
    return [(tuple(i for i, w in enumerate(layer_windows) if w == window), window)
            for window in windows]


def plan_kv_groups(layer_windows: Sequence[int | None], num_blocks: int, block_size: int,
                   max_num_seqs: int, max_num_batched_tokens: int) -> tuple[KVCacheGroup, ...]:
    """Split the memory of num_blocks whole-model blocks between the groups. Empty when the
    layers do not mix windows (one table serves them all).

    A windowed group needs at most, for each running request, its window plus one block on
    either side, and the blocks of two steps' new tokens (freed as the window moves on):
    that many blocks; the full-attention group gets what is left (never fewer blocks than a
    windowed group, which it bounds)."""
    groups = layer_groups(layer_windows)
    if len(groups) < 2 or groups[0][1] is not None:
        return ()
    layer_blocks = num_blocks * len(layer_windows)  # memory, in one layer's blocks
    full_layers = len(groups[0][0])
    sizes = []
    for _, window in groups[1:]:
        assert window is not None
        need = (max_num_seqs * (cdiv(window - 1, block_size) + 2)
                + 2 * cdiv(max_num_batched_tokens, block_size) + 1)
        sizes.append(min(need, num_blocks))
    full = (layer_blocks - sum(n * len(layers) for n, (layers, _) in zip(sizes, groups[1:]))
            ) // full_layers
    if full < max(sizes):  # the windows need all: no saving, every group equal
        full, sizes = num_blocks, [num_blocks] * len(sizes)
    return tuple(KVCacheGroup(layers, window, n)
                 for (layers, window), n in zip(groups, [full, *sizes]))


def layer_group_index(groups: Sequence[KVCacheGroup], num_layers: int) -> list[int]:
    """For each layer, the index of its group (all 0 without groups)."""
    index = [0] * num_layers
    for g, group in enumerate(groups):
        for layer in group.layers:
            index[layer] = g
    return index


class HybridKVCacheManager:
    """KVCacheManager's interface over one manager per group. Allocation is all or nothing
    across groups; a prefix-cache hit is the longest prefix every group can serve (a
    windowed group only needs the blocks inside the window of the next position)."""

    def __init__(self, groups: Sequence[KVCacheGroup], block_size: int,
                 enable_prefix_caching: bool = True) -> None:
        self.groups = tuple(groups)
        self.block_size = block_size
        self.enable_prefix_caching = enable_prefix_caching
        self.managers = [KVCacheManager(g.num_blocks, block_size, enable_prefix_caching,
                                        window=g.window) for g in self.groups]
        self.prefix_cache_queries = 0
        self.prefix_cache_hits = 0

    @property
    def num_groups(self) -> int:
        return len(self.managers)

    @property
    def num_usable_blocks(self) -> int:
        """Of group 0 (full attention), which bounds how long a request can grow."""
        return self.managers[0].num_usable_blocks

    @property
    def pool(self) -> _Pools:
        """Every group's pool, as far as reset_prefix_cache goes."""
        return _Pools([m.pool for m in self.managers])

    def get_computed_blocks(self, request: Request) -> tuple[list[list[KVBlock]], int]:
        empty: list[list[KVBlock]] = [[] for _ in self.managers]
        if not self.enable_prefix_caching:
            return empty, 0
        hashes = request.block_hashes[: (request.num_tokens - 1) // self.block_size]
        cached = [[m.pool.get_cached_block(h) for h in hashes] for m in self.managers]
        n = len(hashes)
        while True:  # shrink until every group serves n blocks
            m = n
            for manager, blocks in zip(self.managers, cached):
                m = self._longest_hit(manager.window, blocks, m)
            if m == n:
                break
            n = m
        self.prefix_cache_queries += request.num_tokens
        self.prefix_cache_hits += n * self.block_size
        hits = []
        for manager, blocks in zip(self.managers, cached):
            first = self._first_needed(manager.window, n)
            null = manager.pool.null_block
            hits.append([null] * first + blocks[first:n])  # type: ignore[list-item]
        return hits, n * self.block_size

    def _first_needed(self, window: int | None, n: int) -> int:
        """First block the query at position n * block_size reads."""
        if window is None:
            return 0
        return max(n * self.block_size - window + 1, 0) // self.block_size

    def _longest_hit(self, window: int | None, blocks: list[KVBlock | None], limit: int) -> int:
        """Largest n <= limit with blocks[first_needed(n):n] all cached."""
        for n in range(limit, 0, -1):
            if all(b is not None for b in blocks[self._first_needed(window, n):n]):
                return n
        return 0

    def allocate_slots(self, request: Request, num_new_tokens: int,
                       new_computed_blocks: list[list[KVBlock]] | None = None
                       ) -> list[list[KVBlock]] | None:
        hits = new_computed_blocks or [[] for _ in self.managers]
        if any(m.num_blocks_short(request, num_new_tokens, h) > 0
               for m, h in zip(self.managers, hits)):
            for m in self.managers:
                m.forget_if_empty(request.request_id)
            return None
        new = [m.allocate_slots(request, num_new_tokens, h) for m, h in zip(self.managers, hits)]
        assert all(b is not None for b in new)
        return new  # type: ignore[return-value]

    def free(self, request: Request) -> None:
        for m in self.managers:
            m.free(request)

    def get_block_ids(self, request_id: str, group: int = 0) -> list[int]:
        return self.managers[group].get_block_ids(request_id)

    def stats(self) -> KVCacheStats:
        """Group 0's blocks; usage is the fullest group's."""
        s = self.managers[0].stats()
        s.usage = max(m.pool.usage() for m in self.managers)
        s.prefix_cache_queries = self.prefix_cache_queries
        s.prefix_cache_hits = self.prefix_cache_hits
        return s


class _Pools:
    """reset_prefix_cache over every group's pool."""

    def __init__(self, pools: list) -> None:
        self.pools = pools

    def reset_prefix_cache(self) -> bool:
        if any(p.num_free_blocks != p.num_usable_blocks for p in self.pools):
            return False
        return all(p.reset_prefix_cache() for p in self.pools)
