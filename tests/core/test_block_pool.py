from __future__ import annotations

import pytest

from quire.core.block_pool import BlockPool


def test_null_block_is_never_handed_out():
    pool = BlockPool(5)
    assert pool.null_block.block_id == 0
    assert [b.block_id for b in pool.get_new_blocks(4)] == [1, 2, 3, 4]
    assert pool.num_free_blocks == 0
    with pytest.raises(ValueError):
        pool.get_new_blocks(1)


def test_free_order_is_lru_order():
    pool = BlockPool(6)
    a = pool.get_new_blocks(3)  # 1 2 3
    pool.free_blocks(reversed(a))  # 3 2 1 appended after 4 5
    assert pool.free_queue.block_ids() == [4, 5, 3, 2, 1]
    assert [b.block_id for b in pool.get_new_blocks(3)] == [4, 5, 3]


def test_cached_blocks_survive_free_until_evicted():
    pool = BlockPool(4)
    b1, b2 = pool.get_new_blocks(2)
    pool.cache_block(b1, 111)
    pool.free_blocks([b1, b2])
    assert pool.get_cached_block(111) is b1
    assert pool.free_queue.block_ids() == [3, 1, 2]
    pool.touch([b1])  # a hit pulls it off the free list
    assert b1.ref_cnt == 1 and pool.free_queue.block_ids() == [3, 2]
    pool.free_blocks([b1])
    got = pool.get_new_blocks(3)
    assert [b.block_id for b in got] == [3, 2, 1]
    assert pool.get_cached_block(111) is None and b1.block_hash is None
    assert pool.num_evictions == 1


def test_ref_counts_with_sharing():
    pool = BlockPool(3)
    (b,) = pool.get_new_blocks(1)
    pool.cache_block(b, 7)
    pool.touch([b])
    assert b.ref_cnt == 2
    pool.free_blocks([b])
    assert b.ref_cnt == 1 and pool.num_free_blocks == 1
    pool.free_blocks([b])
    assert pool.num_free_blocks == 2


def test_reset_prefix_cache_only_when_idle():
    pool = BlockPool(3)
    (b,) = pool.get_new_blocks(1)
    pool.cache_block(b, 5)
    assert not pool.reset_prefix_cache()
    pool.free_blocks([b])
    assert pool.reset_prefix_cache() and pool.get_cached_block(5) is None
