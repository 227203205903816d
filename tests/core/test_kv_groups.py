"""Hybrid KV cache: groups by window over shared pages, all-or-nothing allocation, windowed
prefix hits."""

from __future__ import annotations

from quire.core.kv_groups import (
    HybridKVCacheManager,
    KVCacheGroup,
    layer_slots,
    num_pages,
    plan_kv_groups,
    usable_full_blocks,
)
from tests.core.test_kv_cache_manager import req


def test_plan_cuts_windows_into_groups_of_equal_size():
    # Gemma-3-like: 26 layers, every 6th global, the rest window 512.
    windows = [None if (i + 1) % 6 == 0 else 512 for i in range(26)]
    groups = plan_kv_groups(windows)
    assert groups[0] == KVCacheGroup((5, 11, 17, 23), None)
    assert [g.window for g in groups] == [None] + [512] * 6
    assert [len(g.layers) for g in groups] == [4, 4, 4, 4, 4, 4, 2]
    assert sorted(sum((g.layers for g in groups), ())) == list(range(26))
    group, slot = layer_slots(groups, 26)
    assert (group[5], slot[5]) == (0, 0) and (group[23], slot[23]) == (0, 3)
    assert (group[0], slot[0]) == (1, 0) and (group[25], slot[25]) == (6, 1)
    # The memory of 100 whole-model blocks in pages of 4 layers' blocks.
    assert num_pages(groups, 100, 26) == 650


def test_plan_without_a_mix_is_plain():
    assert plan_kv_groups([None] * 4) == ()
    assert plan_kv_groups([8] * 4) == ()  # one window: KVCacheManager's own business
    assert [g.layers for g in plan_kv_groups([8, None] * 2)] == [(1, 3), (0, 2)]
    # Mostly global (Gemma-2-like alternation inverted): the global layers split too.
    assert [(g.layers, g.window) for g in plan_kv_groups([None, None, 4])] == \
        [((0,), None), ((1,), None), ((2,), 4)]


def test_usable_full_blocks_leaves_room_for_the_windows():
    groups = (KVCacheGroup((1,), None), KVCacheGroup((0,), 8))
    # 100 pages: the null page, and a decoding request's window pages (a step of up to 16
    # tokens: cdiv(7 + 16, 4) + 1 = 7).
    assert usable_full_blocks(groups, 100, 4) == 100 - 1 - 7
    groups = (KVCacheGroup((0,), None), KVCacheGroup((1,), None), KVCacheGroup((2,), 8))
    assert usable_full_blocks(groups, 100, 4) == (100 - 1 - 7) // 2


def _hybrid(pages=20, window=8):
    return HybridKVCacheManager([KVCacheGroup((1,), None), KVCacheGroup((0,), window)],
                                pages, block_size=4)


def test_windowed_group_frees_behind_the_window():
    kv = _hybrid()
    r = req("a", list(range(40)))
    kv.allocate_slots(r, 16)
    r.num_computed_tokens = 16
    for _ in range(20):  # decode: one token a step
        assert kv.allocate_slots(r, 1) is not None
        r.num_computed_tokens += 1
    full, local = kv.get_block_ids("a", 0), kv.get_block_ids("a", 1)
    assert len(full) == len(local) == 9  # 36 tokens: the tables line up block for block
    assert 0 not in full and not set(full) & set(local)  # one pool, distinct pages
    # Position 36 sees 29..36: blocks 7 and 8 only; the rest hold the null block.
    assert local[:7] == [0] * 7 and 0 not in local[7:]
    assert kv.stats().num_used_blocks == 9 + 2
    kv.free(r)
    assert kv.stats().num_used_blocks == 0


def test_allocation_is_all_or_nothing():
    kv = _hybrid(pages=6)  # 5 usable pages
    r = req("a", list(range(12)))
    assert kv.allocate_slots(r, 12) is None  # 3 pages in each group at once
    assert kv.pool.num_free_blocks == 5
    assert "a" not in kv.managers[0].req_to_blocks and "a" not in kv.managers[1].req_to_blocks
    assert kv.allocate_slots(r, 8) is not None
    assert kv.pool.num_free_blocks == 1


def test_groups_keep_their_prefix_cache_entries_apart():
    kv = _hybrid()
    a = req("a", list(range(9)))
    kv.allocate_slots(a, 9)
    held = [kv.get_block_ids("a", g)[:2] for g in (0, 1)]
    kv.free(a)
    b = req("b", list(range(9)))
    hits, n = kv.get_computed_blocks(b)
    assert n == 8  # each group finds its own pages under the same token hashes
    assert [[h.block_id for h in group_hits] for group_hits in hits] == held
    assert set(held[0]).isdisjoint(held[1])


def test_prefix_hit_needs_only_the_window_in_windowed_groups():
    kv = _hybrid(pages=16, window=8)
    a = req("a", list(range(24)))
    for _ in range(6):  # 4 tokens a step: the local group frees blocks 0..2 as it goes
        kv.allocate_slots(a, 4)
        a.num_computed_tokens += 4
    kv.free(a)
    # LRU order: the 3 never-used pages, the local group's blocks 0..2 (freed as the
    # window moved), then a's other pages. Taking 6 evicts exactly blocks 0..2 of group 1.
    filler = req("f", [1000 + i for i in range(4 * 6)])
    kv.managers[1].allocate_slots(filler, 4 * 6)
    b = req("b", list(range(24)) + [7, 7])
    hits, n = kv.get_computed_blocks(b)
    cached0 = [h.block_id for h in hits[0]]
    assert n == 24, (n, cached0)
    assert len(hits[0]) == len(hits[1]) == 6
    assert [h.block_id for h in hits[1][:4]] == [0] * 4
    kv.managers[1].free(filler)
    assert kv.allocate_slots(b, 2, hits) is not None
    assert kv.get_block_ids("b", 0)[:6] == cached0
    assert kv.stats().prefix_cache_hits == 24


def test_prefix_hit_shrinks_to_what_the_window_group_kept():
    kv = _hybrid(pages=13, window=8)
    a = req("a", list(range(24)))
    kv.allocate_slots(a, 24)  # at once: 6 pages per group
    kv.free(a)  # tail first, group 0 then group 1: the free list ends with group 1's head
    # Evict the 2 never-used pages, then group 0's 6 pages and group 1's blocks 5 and 4.
    filler = req("f", [1000 + i for i in range(4 * 10)])
    kv.managers[0].allocate_slots(filler, 4 * 10)
    b = req("b", list(range(24)) + [7])
    hits, n = kv.get_computed_blocks(b)
    assert n == 0 and hits == [[], []]  # group 0 lost everything


def test_windowed_eviction_limits_the_hit():
    kv = _hybrid(pages=13, window=8)
    a = req("a", list(range(24)))
    kv.allocate_slots(a, 24)
    # Free group 1 first and group 0 after: group 1's blocks 5, 4 are evicted first.
    kv.managers[1].free(a)
    kv.managers[0].free(a)
    filler = req("f", [1000 + i for i in range(4 * 2)])
    kv.managers[0].allocate_slots(filler, 8)  # the 0 never-used pages, then 2 of group 1's
    b = req("b", list(range(24)) + [7])
    hits, n = kv.get_computed_blocks(b)
    # n = 6 or 5 would need block 4 of group 1; n = 4 needs its blocks 2 and 3.
    assert n == 16
    assert len(hits[0]) == 4 and [h.block_id for h in hits[1][:2]] == [0, 0]
    assert all(h.block_id for h in hits[1][2:])


def test_prompt_limits_count_the_window_pages_of_a_prefill_step():
    from quire.core.prompt_limits import PromptLimits

    limits = PromptLimits(vocab_size=100, max_model_len=1000, max_num_batched_tokens=16,
                          enable_chunked_prefill=True, block_size=4, num_usable_blocks=20,
                          windows=(8,))
    # 40 tokens: 11 blocks + a 16-token step's window pages (cdiv(7 + 16, 4) + 1 = 7).
    assert limits.why_not_fit(40) is None
    assert "needs 23 KV blocks" in limits.why_not_fit(60)
