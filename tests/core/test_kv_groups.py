"""Hybrid KV cache: groups by window, sizing, all-or-nothing allocation, windowed prefix hits."""

from __future__ import annotations

from quire.core.kv_groups import (
    HybridKVCacheManager,
    KVCacheGroup,
    layer_group_index,
    layer_groups,
    plan_kv_groups,
)
from tests.core.test_kv_cache_manager import req


def test_layer_groups_full_first_then_by_window_size():
    assert layer_groups([8, None, 8, 8, None, 4]) == [((1, 4), None), ((5,), 4),
                                                      ((0, 2, 3), 8)]
    assert layer_groups([None, None]) == [((0, 1), None)]


def test_plan_gives_the_saving_to_full_attention():
    # Gemma-3-like: 5 local layers per global one, window 32, blocks of 16.
    windows = [32, 32, 32, 32, 32, None] * 2
    groups = plan_kv_groups(windows, num_blocks=1000, block_size=16, max_num_seqs=4,
                            max_num_batched_tokens=64)
    full, local = groups
    assert full.window is None and full.layers == (5, 11)
    assert local.window == 32 and len(local.layers) == 10
    # Local: 4 requests x (cdiv(31, 16) + 2) + 2 x cdiv(64, 16) + 1 = 25 blocks.
    assert local.num_blocks == 25
    # The same memory (1000 blocks x 12 layers): the full group gets the rest.
    assert full.num_blocks == (1000 * 12 - 25 * 10) // 2
    assert layer_group_index(groups, 12) == [1] * 5 + [0] + [1] * 5 + [0]


def test_plan_without_mixed_windows_or_room_is_plain():
    assert plan_kv_groups([None] * 4, 100, 16, 8, 64) == ()
    assert plan_kv_groups([8] * 4, 100, 16, 8, 64) == ()  # one window: KVCacheManager's job
    # Windows needing every block: equal groups, nothing gained, nothing lost.
    groups = plan_kv_groups([4096, None], 50, 16, 256, 2048)
    assert [g.num_blocks for g in groups] == [50, 50]


def _hybrid(full_blocks=20, local_blocks=6, window=8):
    return HybridKVCacheManager([KVCacheGroup((1,), None, full_blocks),
                                 KVCacheGroup((0,), window, local_blocks)], block_size=4)


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
    assert 0 not in full
    # Position 36 sees 29..36: blocks 7 and 8 only; the rest hold the null block.
    assert local[:7] == [0] * 7 and 0 not in local[7:]
    assert kv.managers[1].pool.num_free_blocks == 5 - 2
    kv.free(r)
    assert all(m.pool.num_free_blocks == m.pool.num_usable_blocks for m in kv.managers)


def test_allocation_is_all_or_nothing():
    kv = _hybrid(full_blocks=20, local_blocks=3)  # the local pool: 2 usable blocks
    r = req("a", list(range(12)))
    assert kv.allocate_slots(r, 12) is None  # 3 local blocks needed at once
    assert kv.managers[0].pool.num_free_blocks == 19  # group 0 untouched
    assert kv.get_block_ids("a", 0) == [] and "a" not in kv.managers[0].req_to_blocks
    assert kv.allocate_slots(r, 8) is not None


def test_prefix_hit_needs_only_the_window_in_windowed_groups():
    kv = _hybrid(full_blocks=20, local_blocks=8, window=8)
    a = req("a", list(range(24)))
    for _ in range(6):  # 4 tokens a step: the local group frees blocks 0..2 as it goes
        kv.allocate_slots(a, 4)
        a.num_computed_tokens += 4
    kv.free(a)
    # The local pool's free list now starts with the 1 never-used block, then a's blocks
    # 0, 1, 2 (freed first); taking 3 evicts the prefix's blocks 0 and 1.
    filler = req("f", [1000 + i for i in range(12)])
    kv.managers[1].allocate_slots(filler, 12)
    b = req("b", list(range(24)) + [7, 7])
    hits, n = kv.get_computed_blocks(b)
    # Group 0 kept all 6 blocks; group 1 kept blocks 2..5, and the window of position 24
    # (17..24) needs only 4 and 5: the hit is the whole prefix.
    assert n == 24
    assert len(hits[0]) == len(hits[1]) == 6
    assert [h.block_id for h in hits[1][:4]] == [0] * 4
    assert kv.allocate_slots(b, 2, hits) is not None
    assert kv.get_block_ids("b", 0)[:6] == [h.block_id for h in hits[0]]
    assert kv.stats().prefix_cache_hits == 24


def test_prefix_hit_shrinks_to_what_the_window_group_kept():
    kv = _hybrid(full_blocks=20, local_blocks=8, window=8)
    a = req("a", list(range(24)))
    kv.allocate_slots(a, 24)
    kv.free(a)  # tail first: the prefix's blocks 5 and 4 are the next evicted
    filler = req("f", [1000 + i for i in range(12)])
    kv.managers[1].allocate_slots(filler, 12)
    b = req("b", list(range(24)) + [7])
    hits, n = kv.get_computed_blocks(b)
    # n = 6 or 5 would need block 4; n = 4 needs blocks 2 and 3 (window of position 16).
    assert n == 16
    assert len(hits[0]) == 4 and [h.block_id for h in hits[1][:2]] == [0, 0]
    assert all(h.block_id for h in hits[1][2:])
