from __future__ import annotations

from quire.core.kv_cache_manager import KVCacheManager
from quire.core.request import RequestStatus
from quire.core.sampling_params import SamplingParams
from quire.core.scheduler import Scheduler
from tests.core.fakes import make_request, sched_config


def make(num_blocks=20, budget=16, max_seqs=4, chunked=True, max_model_len=64):
    kv = KVCacheManager(num_blocks, 4)
    return Scheduler(sched_config(max_seqs, budget, max_model_len, chunked), kv)


def req(rid, n, max_tokens=8):
    base = 10 * ord(rid[0])  # distinct prompts: no accidental prefix-cache hits
    return make_request(rid, list(range(base, base + n)), SamplingParams(max_tokens=max_tokens,
                   ignore_eos=True), None, 4, max_tokens)


def step(s: Scheduler, token=7):
    out = s.schedule()
    plan = [(r.request_id, n) for r, n in zip(out.requests, out.num_new_tokens)]
    num_sampled = sum(r.num_computed_tokens + n == r.num_tokens
                      for r, n in zip(out.requests, out.num_new_tokens))
    s.update_from_output(out, [[token]] * num_sampled)
    return plan, out


def test_token_budget_and_chunked_prefill_boundaries():
    s = make(budget=16)
    s.add_request(req("a", 10))
    s.add_request(req("b", 10))
    plan, _ = step(s)
    assert plan == [("a", 10), ("b", 6)]  # b's prompt is chunked at the budget
    plan, _ = step(s)
    assert plan == [("a", 1), ("b", 4)]  # decode for a, rest of b's prompt
    plan, _ = step(s)
    assert plan == [("a", 1), ("b", 1)]
    assert s.requests["a"].num_output_tokens == 3 and s.requests["b"].num_output_tokens == 2


def test_no_chunking_admits_when_it_fits():
    s = make(budget=12, chunked=False)
    s.add_request(req("a", 10))
    s.add_request(req("b", 10))
    assert step(s)[0] == [("a", 10)]
    assert step(s)[0] == [("a", 1), ("b", 10)]


def test_max_num_seqs():
    s = make(budget=64, max_seqs=2)
    for name in "abc":
        s.add_request(req(name, 3))
    assert step(s)[0] == [("a", 3), ("b", 3)]
    assert s.num_waiting == 1


def test_preemption_of_most_recent_and_resumption():
    # 6 usable blocks of 4 tokens. a and b each take 2 blocks for 8-token prompts.
    s = make(num_blocks=7, budget=64)
    s.add_request(req("a", 8, max_tokens=12))
    s.add_request(req("b", 8, max_tokens=12))
    assert step(s)[0] == [("a", 8), ("b", 8)]
    b = s.requests["b"]
    # 20 tokens each need 5 blocks apiece, 10 in all: b must be preempted on the way.
    # Run to the end: every request finishes with all its tokens, none lost.
    done = {}
    for _ in range(100):
        if not s.has_unfinished_requests():
            break
        out = s.schedule()
        num_sampled = sum(r.num_computed_tokens + n == r.num_tokens
                          for r, n in zip(out.requests, out.num_new_tokens))
        _, _, finished = s.update_from_output(out, [[7]] * num_sampled)
        done.update({r.request_id: r for r in finished})
    assert set(done) == {"a", "b"}
    assert all(r.num_output_tokens == 12 for r in done.values())
    assert b.num_preemptions >= 1
    assert s.kv_cache.pool.num_free_blocks == 6


def test_preemption_exact_first_victim():
    s = make(num_blocks=5, budget=64)  # 4 usable blocks
    s.add_request(req("a", 4, max_tokens=8))
    s.add_request(req("b", 4, max_tokens=8))
    step(s)  # a: block 1, b: block 2 (both full)
    plan, out = step(s)  # both need a 2nd block: 3, 4
    assert plan == [("a", 1), ("b", 1)]
    assert s.kv_cache.get_block_ids("a") == [1, 3] and s.kv_cache.get_block_ids("b") == [2, 4]
    for _ in range(3):
        step(s)
    # now a and b have 8 tokens each... a needs block #3 -> preempt b (most recent).
    plan, out = step(s)
    assert out.preempted_ids == ["b"] and plan == [("a", 1)]
    assert s.requests["b"].status == RequestStatus.PREEMPTED
    assert s.requests["b"].num_computed_tokens == 0
    assert list(s.waiting)[0].request_id == "b"


def test_stop_conditions():
    s = make()
    r = make_request("a", [1, 2], SamplingParams(max_tokens=5, min_tokens=2, stop_token_ids=[9]),
                eos_token_id=3, block_size=4, max_tokens=5)
    s.add_request(r)
    step(s, token=3)  # EOS before min_tokens: ignored
    assert not r.is_finished
    step(s, token=9)  # stop token at min_tokens
    assert r.status == RequestStatus.FINISHED_STOPPED and r.stop_reason == 9
    assert s.kv_cache.pool.num_free_blocks == 19


def test_max_model_len_stops():
    s = make(max_model_len=6)
    r = req("a", 4, max_tokens=100)
    s.add_request(r)
    for _ in range(3):
        step(s)
    assert r.status == RequestStatus.FINISHED_LENGTH and r.num_tokens == 6


def test_abort_frees_blocks():
    s = make()
    s.add_request(req("a", 9))
    step(s)
    assert s.kv_cache.pool.num_free_blocks == 16
    s.finish_requests(["a"], RequestStatus.FINISHED_ABORTED)
    assert s.kv_cache.pool.num_free_blocks == 19 and not s.has_unfinished_requests()
