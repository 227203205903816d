from __future__ import annotations

import numpy as np

from quire.core.batch import build_batch
from quire.core.kv_cache_manager import KVCacheManager
from quire.core.sampling_params import SamplingParams
from quire.core.scheduler import Scheduler
from tests.core.fakes import make_request, sched_config


def test_mixed_prefill_and_decode_batch_exact_arrays():
    kv = KVCacheManager(num_blocks=10, block_size=4)
    s = Scheduler(sched_config(8, 9, 64), kv)
    a = make_request("a", [10, 11, 12, 13, 14], SamplingParams(max_tokens=4), None, 4, 4)
    s.add_request(a)
    out = s.schedule()
    s.update_from_output(out, [[15]])  # a: 6 tokens, 5 computed
    b = make_request("b", [20, 21, 22, 23, 24, 25, 26, 27, 28, 29],
                SamplingParams(temperature=0.5, top_k=3, logprobs=2), None, 4, 4)
    s.add_request(b)
    out = s.schedule()  # a decodes 1 token, b prefills 8 of 10 (budget 9)
    batch = build_batch(out, kv)
    np.testing.assert_array_equal(batch.input_ids, [15, 20, 21, 22, 23, 24, 25, 26, 27])
    np.testing.assert_array_equal(batch.positions, [5, 0, 1, 2, 3, 4, 5, 6, 7])
    np.testing.assert_array_equal(batch.query_start_loc, [0, 1, 9])
    np.testing.assert_array_equal(batch.seq_lens, [6, 8])
    np.testing.assert_array_equal(batch.block_tables, [[1, 2], [3, 4]])
    np.testing.assert_array_equal(batch.slot_mapping,
                                  [9, 12, 13, 14, 15, 16, 17, 18, 19])
    np.testing.assert_array_equal(batch.logits_indices, [0])  # b is mid-prefill
    assert batch.sampling.num_rows == 1 and batch.max_query_len == 8
    assert batch.slot_mapping.dtype == np.int64 and batch.block_tables.dtype == np.int32


def test_padding_to_buckets_targets_null_block():
    kv = KVCacheManager(num_blocks=10, block_size=4)
    s = Scheduler(sched_config(8, 64, 64), kv)
    s.add_request(make_request("a", [1, 2, 3], SamplingParams(), None, 4, 4))
    batch = build_batch(s.schedule(), kv, token_buckets=(8, 16), request_buckets=(2, 4))
    assert batch.num_tokens == 3 and batch.input_ids.shape == (8,)
    np.testing.assert_array_equal(batch.slot_mapping, [4, 5, 6, 0, 0, 0, 0, 0])
    np.testing.assert_array_equal(batch.query_start_loc, [0, 3, 3])
    np.testing.assert_array_equal(batch.seq_lens, [3, 0])
    np.testing.assert_array_equal(batch.block_tables, [[1], [0]])


def test_sampling_arrays_penalties_and_min_tokens():
    kv = KVCacheManager(num_blocks=10, block_size=4)
    s = Scheduler(sched_config(8, 64, 64), kv)
    p = SamplingParams(repetition_penalty=1.2, min_tokens=2, stop_token_ids=[7], seed=5)
    s.add_request(make_request("a", [1, 2], p, 9, 4, 4))
    s.add_request(make_request("b", [3], SamplingParams(temperature=0), 9, 4, 4))
    sb = build_batch(s.schedule(), kv).sampling
    np.testing.assert_array_equal(sb.prompt_token_ids, [[1, 2], [3, -1]])
    np.testing.assert_array_equal(sb.suppress_rows, [0, 0])
    np.testing.assert_array_equal(sb.suppress_token_ids, [7, 9])
    np.testing.assert_array_equal(sb.has_seed, [True, False])
    np.testing.assert_allclose(sb.repetition_penalty, [1.2, 1.0])
    assert not sb.all_greedy and sb.max_num_logprobs == -1
