"""Speculative decoding in the core, without a framework: a fake model whose next token depends
on its whole context read back through the paged KV cache (so wrong block tables, slots or
roll-back show up as different tokens), and proposers whose drafts are right up to a chosen
position."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pytest

from quire.core.batch import Batch
from quire.core.executor import ModelOutput
from quire.core.kv_cache_manager import KVCacheManager
from quire.core.request import Request
from quire.core.sampling_params import SamplingParams
from quire.core.scheduler import Scheduler
from quire.core.spec_config import SpeculativeConfig
from quire.core.spec_decode import (
    NgramProposer,
    Proposer,
    SpecDecoder,
    SpecDecodeStats,
    StepCostModel,
    accepted_counts,
    ngram_lookup,
)
from tests.core.fakes import (
    CountingExecutor,
    make_engine,
    make_request,
    run_to_completion,
    sched_config,
)


def next_token(context: Sequence[int]) -> int:
    """The fake model: a position-weighted sum of the whole context, mod 26."""
    ids = np.asarray(context, dtype=np.int64)
    return int((ids * np.arange(1, len(ids) + 1)).sum() % 26)


class ContextExecutor(CountingExecutor):
    """Writes each token id into its KV slot, then for each logits row reads the row's whole
    context back through the block table and returns next_token of it."""

    def __init__(self) -> None:
        super().__init__()
        self.kv = np.zeros(0, dtype=np.int64)
        self.block_size = 0

    def allocate_kv_cache(self, num_blocks: int, block_size: int) -> None:
        self.kv = np.full(num_blocks * block_size, -1, dtype=np.int64)
        self.block_size = block_size

    def execute(self, batch: Batch) -> ModelOutput:
        self.batches.append(batch)
        n = batch.num_tokens
        self.kv[batch.slot_mapping[:n]] = batch.input_ids[:n]
        out = []
        for t in batch.logits_indices.tolist():
            i = int(np.searchsorted(batch.query_start_loc, t, side="right")) - 1
            pos = np.arange(batch.positions[t] + 1)
            slots = batch.block_tables[i, pos // batch.block_size] * batch.block_size + \
                pos % batch.block_size
            out.append(next_token(self.kv[slots]))
        return ModelOutput(np.asarray(out, dtype=np.int64))


class WrongAfterProposer(Proposer):
    """Drafts the true continuation, except that the draft at index
    len(all_token_ids) % (k + 1) is wrong (so every accepted length 0..k occurs)."""

    def __init__(self) -> None:
        self.calls = 0

    def propose(self, requests: Sequence[Request], num_drafts: Sequence[int]) -> list[list[int]]:
        self.calls += 1
        out = []
        for r, k in zip(requests, num_drafts):
            ctx = list(r.all_token_ids)
            wrong = len(ctx) % (k + 1)
            drafts = []
            for j in range(k):
                t = next_token(ctx)
                if j == wrong:
                    t = (t + 1) % 26
                drafts.append(t)
                ctx.append(t)
            out.append(drafts)
        return out


def spec(proposer: Proposer, k: int = 3, adaptive: bool = False, max_len: int = 64
         ) -> SpecDecoder:
    return SpecDecoder(SpeculativeConfig(method="ngram", num_speculative_tokens=k,
                                         adaptive=adaptive), proposer, max_len)


PROMPTS = ["abcab", "hello", "zzzzzzzzz", "qwertyuiopasdf"]


def generate(speculative: SpecDecoder | None, params: SamplingParams, prompts=PROMPTS,
             **engine_kwargs) -> dict:
    engine = make_engine(executor=ContextExecutor(), speculative=speculative, **engine_kwargs)
    engine.executor.allocate_kv_cache(engine.kv_cache.pool.num_usable_blocks + 1, 4)
    for i, p in enumerate(prompts):
        engine.add_request(p, params, request_id=str(i))
    done = run_to_completion(engine)
    assert engine.kv_cache.pool.num_free_blocks == engine.kv_cache.pool.num_usable_blocks
    assert not engine.kv_cache.req_to_num_cached
    return {rid: out.outputs for rid, out in done.items()} | {"engine": engine}


def tokens(result: dict) -> dict:
    return {rid: [o.token_ids for o in outs] for rid, outs in result.items() if rid != "engine"}


GREEDY = SamplingParams(temperature=0, max_tokens=20, ignore_eos=True)


@pytest.mark.parametrize("k", [1, 3, 5])
def test_output_equals_plain_decoding_with_rejections_everywhere(k):
    plain = generate(None, GREEDY)
    sd = spec(WrongAfterProposer(), k)
    result = generate(sd, GREEDY)
    assert tokens(result) == tokens(plain)
    stats = sd.stats
    assert 0 < stats.num_accepted_tokens < stats.num_draft_tokens
    assert len(stats.accepted_per_position) == k
    # Each step of a request adds accepted + 1 tokens: fewer steps than tokens.
    assert len(result["engine"].executor.batches) < len(plain["engine"].executor.batches)


def test_rollback_under_preemption_chunked_prefill_and_a_small_budget():
    # 10 usable blocks of 4 tokens for 4 requests of up to 34 tokens: preemption happens;
    # a budget of 8 tokens per step trims drafts and chunks prompts.
    kwargs = dict(num_blocks=11, max_num_batched_tokens=8, max_model_len=40)
    params = SamplingParams(temperature=0, max_tokens=20, ignore_eos=True)
    plain = generate(None, params, **kwargs)
    result = generate(spec(WrongAfterProposer(), 4), params, **kwargs)
    assert tokens(result) == tokens(plain)
    assert result["engine"].scheduler.num_preemptions > 0
    assert max(b.num_tokens for b in result["engine"].executor.batches) <= 8


def test_prefix_cache_hits_after_speculative_runs_are_exact():
    # The same prompt run again hits the blocks cached by the first run's decode; a block
    # cached with a rejected draft's K/V would change the context sum.
    params = SamplingParams(temperature=0, max_tokens=24, ignore_eos=True)
    prompts = ["abcdefgh"] * 2
    engine = make_engine(executor=ContextExecutor(), speculative=spec(WrongAfterProposer(), 3))
    engine.executor.allocate_kv_cache(engine.kv_cache.pool.num_usable_blocks + 1, 4)
    engine.add_request(prompts[0], params, request_id="first")
    first = run_to_completion(engine)["first"].outputs[0]
    again = first.token_ids[:-1]
    engine.add_request([ord(c) - 97 for c in prompts[0]] + again, params, request_id="second")
    second = run_to_completion(engine)["second"]
    assert second.num_cached_tokens >= 16
    ctx = [ord(c) - 97 for c in prompts[0]] + again
    expected = []
    for _ in range(24):
        expected.append(next_token(ctx))
        ctx.append(expected[-1])
    assert second.outputs[0].token_ids == expected


def test_stop_string_inside_an_accepted_run_ends_where_plain_decoding_ends():
    plain = generate(None, GREEDY, prompts=["hello"])
    text = plain["0"][0].text
    stop = text[7:9]
    params = SamplingParams(temperature=0, max_tokens=20, ignore_eos=True, stop=[stop])
    want = generate(None, params, prompts=["hello"])["0"][0]
    got = generate(spec(WrongAfterProposer(), 5), params, prompts=["hello"])["0"][0]
    assert (got.text, got.token_ids, got.finish_reason) == \
        (want.text, want.token_ids, want.finish_reason)
    assert got.finish_reason == "stop" and len(got.token_ids) < 20


@pytest.mark.parametrize("max_tokens", [1, 2, 7])
def test_max_tokens_and_stop_tokens_hold_when_a_step_adds_several(max_tokens):
    params = SamplingParams(temperature=0, max_tokens=max_tokens, ignore_eos=True)
    plain = generate(None, params)
    result = generate(spec(WrongAfterProposer(), 4), params)
    assert tokens(result) == tokens(plain)
    assert all(len(t[0]) == max_tokens for t in tokens(result).values())
    # A stop token inside an accepted run ends the request there.
    stop_id = tokens(plain)["1"][0][min(3, max_tokens - 1)]
    params = SamplingParams(temperature=0, max_tokens=max_tokens, stop_token_ids=[stop_id])
    assert tokens(generate(spec(WrongAfterProposer(), 4), params)) == \
        tokens(generate(None, params))


def test_parallel_sampling_children_verify_independently():
    # (The fake model ignores temperature: every child follows the same path.)
    params = SamplingParams(temperature=1.0, max_tokens=12, ignore_eos=True, n=3)
    assert tokens(generate(spec(WrongAfterProposer(), 3), params)) == \
        tokens(generate(None, params))


def test_scheduler_trims_drafts_to_the_budget_and_drops_them_before_preempting():
    kv = KVCacheManager(num_blocks=4, block_size=4)  # 3 usable blocks
    s = Scheduler(sched_config(4, 3, 64), kv)
    r = make_request("r", [1, 2, 3, 4, 5, 6, 7], SamplingParams(max_tokens=20), None, 4, 20)
    s.add_request(r)
    out = s.schedule()  # prefill 3 of 7 (budget 3)
    s.update_from_output(out, [])
    out = s.schedule()
    s.update_from_output(out, [])
    out = s.schedule()  # the last prompt token
    s.update_from_output(out, [[8]])
    r.spec_token_ids = [9, 10, 11, 12]
    out = s.schedule()
    assert out.draft_token_ids == [[9, 10]] and out.num_new_tokens == [3]  # budget 3
    s.update_from_output(out, [[9, 13]])  # draft 9 accepted, 10 rejected -> 13
    assert r.output_token_ids == [8, 9, 13] and r.num_computed_tokens == 9
    # 10 tokens, 9 computed, all 3 blocks (12 slots) held: drafts that would need a 4th
    # block are trimmed rather than preempting the request itself.
    assert len(kv.get_block_ids("r")) == 3
    r.spec_token_ids = [1, 2, 3]
    s.config = sched_config(4, 8, 64)
    out = s.schedule()
    assert out.draft_token_ids == [[1, 2]] and not out.preempted_ids


def test_draft_rows_sample_with_their_own_step_and_penalties():
    from quire.core.batch import build_batch

    kv = KVCacheManager(num_blocks=16, block_size=4)
    s = Scheduler(sched_config(4, 64, 64), kv)
    p = SamplingParams(temperature=0.5, seed=3, presence_penalty=0.5, min_tokens=3)
    r = make_request("r", [1, 2, 3], p, 99, 4, 10)
    s.add_request(r)
    s.update_from_output(s.schedule(), [[4]])
    r.spec_token_ids = [5, 6]
    out = s.schedule()
    b = build_batch(out, kv)
    assert b.input_ids.tolist() == [4, 5, 6]
    assert b.logits_indices.tolist() == [0, 1, 2]
    assert b.logits_row_start.tolist() == [0, 3]
    assert b.draft_token_ids.tolist() == [5, 6, -1]
    sb = b.sampling
    assert sb.output_steps.tolist() == [1, 2, 3]
    assert sb.seeds.tolist() == [3, 3, 3]
    assert sb.output_token_ids.tolist() == [[4, -1, -1], [4, 5, -1], [4, 5, 6]]
    assert sb.suppress_rows.tolist() == [0, 1]  # min_tokens 3: EOS banned at steps 1, 2


def test_ngram_lookup():
    t = np.array([1, 2, 3, 9, 1, 2, 3, 7, 5, 1, 2, 3])
    assert ngram_lookup(t, 1, 3, 2) == [7, 5]  # the latest match of [1, 2, 3]
    assert ngram_lookup(t, 1, 3, 10) == [7, 5, 1, 2, 3]  # up to the end
    assert ngram_lookup(np.array([4, 5, 6, 4]), 1, 3, 2) == [5, 6]
    assert ngram_lookup(np.array([4, 5, 6, 4]), 2, 3, 2) == []  # no 2-gram match
    assert ngram_lookup(np.array([1, 2, 3]), 1, 3, 2) == []
    assert ngram_lookup(np.array([8]), 1, 3, 2) == []
    # The longest suffix wins over a later, shorter match.
    t = np.array([5, 6, 7, 0, 9, 6, 7, 1, 5, 6, 7])
    assert ngram_lookup(t, 1, 3, 1) == [0]


def test_accepted_counts_and_stats():
    sampled = np.array([5, 6, 0, 1, 7, 2, 8, 8, 9])
    drafts = np.array([5, 6, 9, -1, -1, 2, 3, 8, -1])
    row_start = np.array([0, 4, 5, 9])
    accepted = accepted_counts(sampled, drafts, row_start)
    assert accepted.tolist() == [2, 0, 1]
    stats = SpecDecodeStats()
    stats.record(np.diff(row_start) - 1, accepted)
    assert (stats.num_drafts, stats.num_draft_tokens, stats.num_accepted_tokens) == (2, 6, 3)
    assert stats.accepted_per_position == [2, 1, 0]
    assert stats.mean_accepted_length == pytest.approx(2.5)


def test_ngram_proposer_speeds_up_copying():
    # "Copy the prompt": the fake model continues a periodic context periodically.
    params = SamplingParams(temperature=0, max_tokens=30, ignore_eos=True)
    sd = SpecDecoder(SpeculativeConfig(method="ngram", num_speculative_tokens=4,
                                       adaptive=False), NgramProposer(1, 3), 64)
    plain = generate(None, params, prompts=["abcabcabcabc"])
    result = generate(sd, params, prompts=["abcabcabcabc"])
    assert tokens(result) == tokens(plain)
    assert sd.stats.num_drafts > 0


class AlwaysWrong(Proposer):
    def __init__(self) -> None:
        self.drafted = 0

    def propose(self, requests, num_drafts):
        self.drafted += len(requests)
        return [[(next_token(r.all_token_ids) + 1) % 26] * k
                for r, k in zip(requests, num_drafts)]


def test_adaptive_backs_off_when_drafts_are_rejected():
    params = SamplingParams(temperature=0, max_tokens=40, ignore_eos=True)
    fixed, adaptive = AlwaysWrong(), AlwaysWrong()
    generate(spec(fixed, 3, adaptive=False), params, prompts=["abc"])
    sd = spec(adaptive, 3, adaptive=True)
    # Step costs stay unknown (no fit): the back-off rests on acceptance alone, not on
    # wall-clock step times a loaded machine would skew.
    sd.cost = StepCostModel(min_steps=10**9)
    assert tokens(generate(sd, params, prompts=["abc"])) == \
        tokens(generate(None, params, prompts=["abc"]))
    assert fixed.drafted == 38  # every step but the first (prefill) and the last
    assert adaptive.drafted <= 8  # back-offs of 1, 2, 4, 8, ... steps between probes


def test_cost_model_raises_the_bar_in_large_steps():
    cost = StepCostModel(min_steps=4)
    assert cost.token_share(64) == 0.0  # nothing known yet: no cost assumed
    for tokens_, secs in [(1, 0.011), (8, 0.018), (64, 0.074), (256, 0.266), (16, 0.026)]:
        cost.observe(tokens_, secs)
    a, b = cost.coefficients()
    assert a == pytest.approx(0.010, rel=0.05) and b == pytest.approx(0.001, rel=0.05)
    assert cost.token_share(1) < 0.1 < 0.8 < cost.token_share(64)
    sd = SpecDecoder(SpeculativeConfig(method="ngram", num_speculative_tokens=2),
                     NgramProposer(1, 3), 64)
    sd.cost = cost
    r = make_request("r", [1, 2, 3], SamplingParams(), None, 4, 10)
    r.num_computed_tokens = 2
    r.spec_acceptance = 0.5
    assert sd._wants_drafts(r, sd.threshold(1))
    assert not sd._wants_drafts(r, sd.threshold(64))


def test_config_parsing():
    c = SpeculativeConfig.parse('{"method": "ngram", "num_speculative_tokens": 4, '
                                '"prompt_lookup_min": 2, "prompt_lookup_max": 5}')
    assert (c.num_speculative_tokens, c.prompt_lookup_min, c.prompt_lookup_max) == (4, 2, 5)
    assert SpeculativeConfig.parse({"num_speculative_tokens": 2}).method == "ngram"
    assert SpeculativeConfig.parse({"model": "m", "num_speculative_tokens": 2}).method == \
        "draft_model"
    for bad, match in [('{"method": "eagle", "num_speculative_tokens": 2}', "one of"),
                       ('{"num_speculative_tokens": 0}', "positive"),
                       ('{"method": "ngram"}', "num_speculative_tokens"),
                       ('{"num_speculative_tokens": 2, "k": 1}', "unknown"),
                       ("{nope", "JSON"),
                       ('{"method": "draft_model", "num_speculative_tokens": 2}', "model"),
                       ('{"num_speculative_tokens": 2, "prompt_lookup_min": 4, '
                        '"prompt_lookup_max": 2}', "larger")]:
        with pytest.raises(ValueError, match=match):
            SpeculativeConfig.parse(bad)
