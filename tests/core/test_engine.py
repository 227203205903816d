from __future__ import annotations

import pytest

from quire.core.sampling_params import SamplingParams
from tests.core.fakes import check_invariants, make_engine, run_to_completion


def test_generation_and_text():
    engine = make_engine()
    engine.add_request("abc", SamplingParams(max_tokens=4), request_id="r")
    out = run_to_completion(engine)["r"]
    assert out.outputs[0].token_ids == [3, 4, 5, 6]
    assert out.outputs[0].text == "defg" and out.outputs[0].finish_reason == "length"
    assert out.metrics.first_token_time is not None and out.metrics.finished_time is not None
    assert engine.kv_cache.pool.num_free_blocks == 31


def test_stop_string_truncates_and_is_never_streamed():
    engine = make_engine()
    engine.add_request("a", SamplingParams(max_tokens=20, stop=["efg"]), request_id="r")
    seen = []
    while engine.has_unfinished_requests():
        for out in engine.step():
            seen.append(out.outputs[0].text)
    assert seen[-1] == "bcd" and out.outputs[0].stop_reason == "efg"
    assert out.outputs[0].finish_reason == "stop"
    assert all("e" not in t for t in seen)  # a partial stop string never leaked


def test_stop_string_included():
    engine = make_engine()
    engine.add_request("a", SamplingParams(max_tokens=20, stop="cd",
                                           include_stop_str_in_output=True), request_id="r")
    assert run_to_completion(engine)["r"].outputs[0].text == "bcd"


def test_too_long_prompt_finishes_with_error():
    engine = make_engine(max_model_len=8)
    engine.add_request("abcdefgh", SamplingParams(), request_id="long")
    engine.add_request("ab", SamplingParams(max_tokens=2), request_id="ok")
    done = run_to_completion(engine)
    assert done["long"].outputs[0].finish_reason == "error"
    assert "max_model_len" in done["long"].error
    assert done["ok"].outputs[0].token_ids == [2, 3]


def test_prompt_larger_than_cache_finishes_with_error():
    engine = make_engine(num_blocks=3, max_model_len=64)  # 2 blocks of 4 tokens
    engine.add_request("abcdefghij", SamplingParams(), request_id="big")
    assert "KV blocks" in run_to_completion(engine)["big"].error


def test_bad_input_raises():
    engine = make_engine()
    with pytest.raises(ValueError, match="empty"):
        engine.add_request("", SamplingParams())
    with pytest.raises(ValueError, match=r"\[0, 100\)"):
        engine.add_request([1, 500], SamplingParams())
    with pytest.raises(TypeError):
        engine.add_request(3.5, SamplingParams())  # type: ignore[arg-type]
    engine.add_request("a", request_id="x")
    with pytest.raises(ValueError, match="already in use"):
        engine.add_request("a", request_id="x")


def test_abort_frees_blocks_immediately():
    engine = make_engine()
    engine.add_request("abcdefg", SamplingParams(max_tokens=50), request_id="r")
    engine.step()
    assert engine.kv_cache.pool.num_free_blocks < 31
    engine.abort_request("r")
    assert engine.kv_cache.pool.num_free_blocks == 31
    assert not engine.has_unfinished_requests()


def test_many_requests_with_preemption_none_lost():
    engine = make_engine(num_blocks=9, max_num_batched_tokens=16, max_model_len=32)
    prompts = ["abcdefgh"[: 1 + i % 8] for i in range(12)]
    for i, p in enumerate(prompts):
        engine.add_request(p, SamplingParams(max_tokens=12, ignore_eos=True), request_id=str(i))
    done = run_to_completion(engine)
    assert len(done) == 12
    for i, p in enumerate(prompts):
        last = ord(p[-1]) - ord("a")
        assert done[str(i)].outputs[0].token_ids == [(last + k) % 26 for k in range(1, 13)]
    assert engine.scheduler.num_preemptions > 0
    assert engine.kv_cache.pool.num_free_blocks == 8
    check_invariants(engine)


def test_parallel_sampling_shares_prompt_blocks():
    engine = make_engine()
    engine.add_request("abcdefghi", SamplingParams(n=3, temperature=1.0, max_tokens=2),
                       request_id="p")
    engine.step()
    # The 9-token prompt has 2 full blocks; the 3 children share them.
    ids = [engine.kv_cache.get_block_ids(f"p#{i}") for i in range(3)]
    assert ids[0][:2] == ids[1][:2] == ids[2][:2]
    assert len({i[2] for i in ids}) == 3  # own last block each
    assert engine.kv_cache.pool.blocks[ids[0][0]].ref_cnt == 3
    out = run_to_completion(engine)["p"]
    assert [c.index for c in out.outputs] == [0, 1, 2]
    assert engine.kv_cache.pool.num_free_blocks == 31


def test_prefix_cache_hit_reported():
    engine = make_engine()
    engine.add_request("abcdefghij", SamplingParams(max_tokens=1), request_id="a")
    run_to_completion(engine)
    engine.add_request("abcdefghijk", SamplingParams(max_tokens=1), request_id="b")
    out = run_to_completion(engine)["b"]
    assert out.num_cached_tokens == 8
    assert engine.executor.batches[-1].num_tokens == 3


def test_prompt_over_budget_without_chunking_is_an_error_not_a_hang():
    engine = make_engine(num_blocks=32, block_size=4, max_num_seqs=8, max_num_batched_tokens=4,
                         max_model_len=64, enable_chunked_prefill=False)
    engine.add_request("abcdefgh", SamplingParams(max_tokens=2), request_id="big")
    engine.add_request("abc", SamplingParams(max_tokens=2), request_id="small")
    done = run_to_completion(engine)
    assert "chunked prefill is off" in done["big"].error
    assert done["small"].outputs[0].token_ids == [3, 4]
