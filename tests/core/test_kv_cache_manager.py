from __future__ import annotations

from quire.core.kv_cache_manager import KVCacheManager
from quire.core.request import Request
from quire.core.sampling_params import SamplingParams
from tests.core.fakes import make_request


def req(rid: str, tokens: list[int], block_size: int = 4) -> Request:
    return make_request(rid, tokens, SamplingParams(), eos_token_id=None,
                        block_size=block_size, max_tokens=16)


def test_allocate_exact_block_ids_and_free_reverse():
    kv = KVCacheManager(num_blocks=10, block_size=4)
    r = req("a", list(range(10)))
    assert [b.block_id for b in kv.allocate_slots(r, 10)] == [1, 2, 3]
    r.num_computed_tokens = 10
    assert kv.allocate_slots(r, 2) == []  # fits in block 3
    r.num_computed_tokens = 12
    assert [b.block_id for b in kv.allocate_slots(r, 1)] == [4]
    assert kv.get_block_ids("a") == [1, 2, 3, 4]
    kv.free(r)
    assert kv.pool.free_queue.block_ids() == [5, 6, 7, 8, 9, 4, 3, 2, 1]


def test_allocation_failure_changes_nothing():
    kv = KVCacheManager(num_blocks=4, block_size=4)
    r = req("a", list(range(20)))
    assert kv.allocate_slots(r, 20) is None
    assert kv.pool.num_free_blocks == 3 and kv.get_block_ids("a") == []


def test_prefix_hit_capped_below_num_tokens():
    kv = KVCacheManager(num_blocks=10, block_size=4)
    a = req("a", list(range(8)))
    kv.allocate_slots(a, 8)
    # Same 8 tokens: both blocks are cached, but the last token must be computed -> 1 block.
    b = req("b", list(range(8)))
    hits, n = kv.get_computed_blocks(b)
    assert [h.block_id for h in hits] == [1] and n == 4
    # A longer request with the same prefix hits both.
    c = req("c", list(range(9)))
    hits, n = kv.get_computed_blocks(c)
    assert [h.block_id for h in hits] == [1, 2] and n == 8
    kv.allocate_slots(c, 1, hits)
    assert kv.get_block_ids("c") == [1, 2, 3]
    assert kv.pool.blocks[1].ref_cnt == 2
    assert kv.prefix_cache_hits == 12 and kv.prefix_cache_queries == 17


def test_hit_on_freed_cached_block_and_eviction():
    kv = KVCacheManager(num_blocks=4, block_size=4)
    a = req("a", list(range(8)))
    kv.allocate_slots(a, 8)
    kv.free(a)  # free list: 3, 2, 1 (all cached except 3)
    b = req("b", list(range(8)) + [99])
    hits, n = kv.get_computed_blocks(b)
    assert [h.block_id for h in hits] == [1, 2] and n == 8
    assert kv.allocate_slots(b, 1, hits) is not None
    assert kv.get_block_ids("b") == [1, 2, 3]
    kv.free(b)
    # A different prompt evicts the cached blocks in LRU order: 3 first, then 2, then 1.
    c = req("c", [50] * 12)
    assert kv.get_computed_blocks(c) == ([], 0)
    kv.allocate_slots(c, 12)
    assert kv.get_block_ids("c") == [3, 2, 1]
    assert kv.pool.cached == {h: kv.pool.blocks[i]
                              for h, i in zip(c.block_hashes, [3, 2, 1])}


def test_cache_salt_separates_prefixes():
    kv = KVCacheManager(num_blocks=10, block_size=4)
    a = make_request("a", list(range(9)), SamplingParams(), None, 4, 16, extra_keys=("salt1",))
    kv.allocate_slots(a, 9)
    b = make_request("b", list(range(9)), SamplingParams(), None, 4, 16, extra_keys=("salt2",))
    assert kv.get_computed_blocks(b) == ([], 0)


def test_prefix_caching_off():
    kv = KVCacheManager(num_blocks=10, block_size=4, enable_prefix_caching=False)
    a = req("a", list(range(9)))
    kv.allocate_slots(a, 9)
    assert kv.get_computed_blocks(req("b", list(range(9)))) == ([], 0)
    assert kv.pool.cached == {}


def test_sliding_window_gives_back_blocks_before_the_window():
    """window 6, blocks of 4: the query at position p sees p-5..p, so once p reaches 9
    block 0 (positions 0-3) is out of every later window and goes back to the pool; the
    table holds the null block there. Freeing the request skips the null entries."""
    kv = KVCacheManager(num_blocks=10, block_size=4, window=6)
    r = req("a", list(range(9)))
    kv.allocate_slots(r, 9)
    assert kv.get_block_ids("a") == [1, 2, 3]
    r.num_computed_tokens = 9  # next query at position 9: needs positions 4..9
    kv.allocate_slots(r, 1)
    assert kv.get_block_ids("a") == [0, 2, 3]
    assert kv.pool.blocks[1].ref_cnt == 0 and kv.stats().num_used_blocks == 2
    r.num_computed_tokens = 12  # position 12 needs 7..12: block 1 (4-7) is still needed
    kv.allocate_slots(r, 1)
    assert kv.get_block_ids("a") == [0, 2, 3, 4]
    r.num_computed_tokens = 14  # position 14 needs 9..14: block 1 goes
    kv.allocate_slots(r, 1)
    assert kv.get_block_ids("a") == [0, 0, 3, 4]
    kv.free(r)
    assert kv.stats().num_used_blocks == 0 and kv.pool.null_block.ref_cnt == 1
    # The given-back blocks stay in the prefix cache: a request with the same prefix hits.
    b = req("b", list(range(9)))
    hits, _ = kv.get_computed_blocks(b)
    assert [h.block_id for h in hits] == [1, 2]


def test_no_window_keeps_every_block():
    kv = KVCacheManager(num_blocks=10, block_size=4)
    r = req("a", list(range(9)))
    kv.allocate_slots(r, 9)
    r.num_computed_tokens = 9
    kv.allocate_slots(r, 4)
    assert kv.get_block_ids("a") == [1, 2, 3, 4]
