"""Hybrid KV cache: layers with different attention windows keep separate block tables over
one shared pool of pages.

A model that mixes full-attention layers with sliding-window layers (Gemma 2: 1:1, Gemma 3:
1 global per 5 local) would otherwise keep every block of every layer, though a local layer
reads only the last `window` positions. Here the layers form KV groups of equal size k, each
of one window (Gemma 3 with 4 global and 22 local layers: one group of the 4 global layers,
six groups of up to 4 local ones). A page holds one block of k layers (layer slot s of a
page belongs to the group's s-th layer); every group takes its pages from the one pool and
has its own block table per request; a windowed group gives its pages back as the window
moves on. The split between groups is dynamic: a long context costs about what its global
layers need.

    page:   [slot 0 | slot 1 | slot 2 | slot 3]      k = 4 layers' blocks
    group 0 (full, layers 5 11 17 23)   table: p7 p2 p9 p4 p8 ...   (every block)
    group 1 (window, layers 0 1 2 3)    table: 0  0  0  p3 p6       (the window only)

A backend opts in with Capabilities.hybrid_kv_cache; allocate_kv_cache then gets the groups
and the page count, and layer l reads the block table and slot mapping of its group
(Batch.group_tables)."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass

from quire.core.block_pool import BlockPool, KVBlock
from quire.core.kv_cache_manager import KVCacheManager, KVCacheStats
from quire.core.request import Request
from quire.core.sizing import cdiv


@dataclass(frozen=True, slots=True)
class KVCacheGroup:
    """Layers sharing one block table and their window (None: full attention); layers[s]
    keeps its K/V in slot s of each page."""

    layers: tuple[int, ...]
    window: int | None


def plan_kv_groups(layer_windows: Sequence[int | None]) -> tuple[KVCacheGroup, ...]:
    """Groups for per-layer windows: full-attention layers first, then by window size, each
    cut into groups of the smallest such set's size. Empty unless full-attention layers mix
    with windowed ones (a single window is KVCacheManager's own business)."""
    windows = sorted(set(layer_windows), key=lambda w: (w is not None, w or 0))
    if len(windows) < 2 or windows[0] is not None:
        return ()
    by_window = [[i for i, w in enumerate(layer_windows) if w == window] for window in windows]
    k = min(len(layers) for layers in by_window)
    return tuple(KVCacheGroup(tuple(layers[i:i + k]), window)
                 for window, layers in zip(windows, by_window)
                 for i in range(0, len(layers), k))


def layer_slots(groups: Sequence[KVCacheGroup], num_layers: int) -> tuple[list[int], list[int]]:
    """(group of each layer, its slot in a page); without groups, every layer in group 0
    with a cache (slot) of its own."""
    if not groups:
        return [0] * num_layers, list(range(num_layers))
    group, slot = [0] * num_layers, [0] * num_layers
    for g, kv_group in enumerate(groups):
        for s, layer in enumerate(kv_group.layers):
            group[layer], slot[layer] = g, s
    return group, slot


def page_slots(groups: Sequence[KVCacheGroup]) -> int:
    """Layer blocks in one page."""
    return max(len(g.layers) for g in groups)


def num_pages(groups: Sequence[KVCacheGroup], num_blocks: int, num_layers: int) -> int:
    """Pages in the memory of num_blocks whole-model blocks."""
    return num_blocks * num_layers // page_slots(groups)


# A decode step computes one token, or a few with speculative drafts: the windowed groups'
# share of a long sequence is sized for this many.
DECODE_TOKENS = 16


def window_pages(windows: Sequence[int], block_size: int, num_new_tokens: int) -> int:
    """Pages windowed groups (of these windows) hold for one request computing
    num_new_tokens at once: its window, the new tokens, a partial block on either side."""
    return sum(cdiv(w - 1 + num_new_tokens, block_size) + 1 for w in windows)


def usable_full_blocks(groups: Sequence[KVCacheGroup], pages: int, block_size: int) -> int:
    """Blocks one request can grow to in each full-attention group, decoding alone: the
    longest sequence the cache serves is this times block_size. (A long prompt's chunks
    need more of the windowed groups: PromptLimits checks those.)"""
    full = sum(1 for g in groups if g.window is None)
    windows = [g.window for g in groups if g.window is not None]
    return max(0, (pages - 1 - window_pages(windows, block_size, DECODE_TOKENS)) // full)


class HybridKVCacheManager:
    """KVCacheManager's interface over one manager per group, all on one pool. Allocation is
    all or nothing across groups; a prefix-cache hit is the longest prefix every group can
    serve (a windowed group only needs the blocks inside the window of the next position)."""

    def __init__(self, groups: Sequence[KVCacheGroup], num_pages: int, block_size: int,
                 enable_prefix_caching: bool = True) -> None:
        self.groups = tuple(groups)
        self.block_size = block_size
        self.enable_prefix_caching = enable_prefix_caching
        self.pool = BlockPool(num_pages, enable_caching=enable_prefix_caching)
        self.managers = [KVCacheManager(num_pages, block_size, enable_prefix_caching,
                                        window=g.window, pool=self.pool, group=i)
                         for i, g in enumerate(self.groups)]
        self.prefix_cache_queries = 0
        self.prefix_cache_hits = 0

    @property
    def num_groups(self) -> int:
        return len(self.managers)

    def get_computed_blocks(self, request: Request) -> tuple[list[list[KVBlock]], int]:
        empty: list[list[KVBlock]] = [[] for _ in self.managers]
        if not self.enable_prefix_caching:
            return empty, 0
        hashes = request.block_hashes[: (request.num_tokens - 1) // self.block_size]
        n = len(hashes)
        cached: list[list[KVBlock | None]] = []
        for m in self.managers:  # full-attention groups first: each stops at its first miss
            blocks: list[KVBlock | None] = []
            for h in hashes[:n]:
                block = self.pool.get_cached_block(m.cache_key(h))
                if block is None and m.window is None:
                    break
                blocks.append(block)
            if m.window is None:
                n = len(blocks)
            cached.append(blocks)
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
            hits.append([self.pool.null_block] * first + blocks[first:n])  # type: ignore
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
        needed = sum(m.num_blocks_needed(request, num_new_tokens, h)
                     for m, h in zip(self.managers, hits))
        if needed > self.pool.num_free_blocks:
            for m in self.managers:
                m.forget_if_empty(request.request_id)
            return None
        return [m.take_slots(request, num_new_tokens, h) for m, h in zip(self.managers, hits)]

    def free(self, request: Request) -> None:
        for m in self.managers:
            m.free(request)

    def get_block_ids(self, request_id: str, group: int = 0) -> list[int]:
        return self.managers[group].get_block_ids(request_id)

    def stats(self) -> KVCacheStats:
        """The shared pool's pages (every group's blocks), and this manager's lookups."""
        return dataclasses.replace(self.managers[0].stats(),
                                   prefix_cache_queries=self.prefix_cache_queries,
                                   prefix_cache_hits=self.prefix_cache_hits)
