"""Speculative decoding end to end on the cpu backend: greedy output identical to decoding
without it for every architecture, seeded sampling identical too (each draft row samples
with its own output step's noise), and the unseeded token distribution unchanged
(chi-square)."""

from __future__ import annotations

import math
from collections import Counter

import pytest

from quire import LLM, SamplingParams

NGRAM = {"method": "ngram", "num_speculative_tokens": 4, "prompt_lookup_max": 3}
# Repetitive prompts: prompt lookup finds matches, and random models loop.
PROMPTS = ["one two three one two three one two", "the cache the cache the cache",
           "hello world", "paris paris paris is the capital of"]


def engines(model_dir, spec_config=NGRAM, **kwargs):
    common = {"dtype": "float32", "block_size": 8, "num_blocks": 128, **kwargs}
    return LLM(model_dir, **common), LLM(model_dir, speculative_config=spec_config, **common)


def token_ids(llm, prompts, params):
    return [[c.token_ids for c in o.outputs] for o in llm.generate(prompts, params,
                                                                   use_tqdm=False)]


@pytest.mark.parametrize("arch", ["llama", "mistral", "qwen2", "qwen3"])
def test_greedy_equals_plain_decoding(model_factory, arch):
    plain, spec = engines(model_factory(arch))
    params = SamplingParams(temperature=0, max_tokens=32, ignore_eos=True)
    assert token_ids(spec, PROMPTS, params) == token_ids(plain, PROMPTS, params)
    stats = spec.engine.stats().spec_decode
    assert stats.num_drafts > 0 and stats.num_accepted_tokens > 0


@pytest.mark.parametrize("arch", ["llama", "gemma3"])
def test_draft_model_greedy_equals_plain_under_cache_pressure(model_factory, arch):
    """8 blocks of 8 for 4 requests: preemption, and steps where the scheduler drops a
    request's drafts for want of room (the draft model has then already run the token the
    target picks: it must still recompute the last one for its logits). gemma3: the
    hybrid cache (window 8), drafts crossing the window as it frees pages. The model
    drafts for itself (its own greedy tokens), so most drafts are accepted."""
    model = model_factory(arch)
    plain, spec = engines(model, {"method": "draft_model", "model": model,
                                  "num_speculative_tokens": 3}, num_blocks=8)
    assert (arch == "gemma3") == hasattr(spec.engine.kv_cache, "groups")
    params = SamplingParams(temperature=0, max_tokens=32, ignore_eos=True)
    assert token_ids(spec, PROMPTS, params) == token_ids(plain, PROMPTS, params)
    stats = spec.engine.stats()
    assert stats.spec_decode.num_accepted_tokens > 0.8 * stats.spec_decode.num_draft_tokens
    assert stats.num_preemptions > 0 and stats.num_used_blocks == 0


def test_greedy_equal_under_preemption_with_prefix_hits_and_logprobs(llama_dir):
    # 24 usable blocks of 8 for 4 requests growing to ~70 tokens: preemption; the shared
    # prefix hits the cache.
    kwargs = dict(dtype="float32", block_size=8, num_blocks=25, max_num_batched_tokens=48)
    plain = LLM(llama_dir, **kwargs)
    spec = LLM(llama_dir, speculative_config=NGRAM, **kwargs)
    prompts = [PROMPTS[0] + " " + p for p in PROMPTS]
    params = SamplingParams(temperature=0, max_tokens=48, ignore_eos=True, logprobs=2)
    want = plain.generate(prompts, params, use_tqdm=False)
    got = spec.generate(prompts, params, use_tqdm=False)
    assert spec.engine.stats().num_preemptions > 0
    assert spec.engine.stats().prefix_cache_hits > 0
    for w, g in zip(want, got):
        assert g.outputs[0].token_ids == w.outputs[0].token_ids
        for lw, lg in zip(w.outputs[0].logprobs, g.outputs[0].logprobs):
            assert lw.keys() == lg.keys()
            for t in lw:
                assert lg[t].logprob == pytest.approx(lw[t].logprob, abs=1e-3)
                assert lg[t].rank == lw[t].rank
    assert spec.engine.kv_cache.stats().num_used_blocks == 0


def test_seeded_sampling_equals_plain_decoding(llama_dir):
    plain, spec = engines(llama_dir)
    params = [SamplingParams(temperature=t, seed=s, top_k=k, top_p=p, max_tokens=24,
                             ignore_eos=True, presence_penalty=pp)
              for t, s, k, p, pp in [(0.7, 1, 0, 1.0, 0.0), (1.0, 2, 20, 0.9, 0.0),
                                     (0.5, 3, 0, 0.8, 0.5), (1.2, 4, 5, 1.0, 0.0)]]
    assert token_ids(spec, PROMPTS, params) == token_ids(plain, PROMPTS, params)
    assert spec.engine.stats().spec_decode.num_accepted_tokens > 0


def _chi_square_critical(df: int, z: float = 3.09) -> float:
    """The chi-square quantile at the normal quantile z (3.09: p = 0.001), by the
    Wilson-Hilferty approximation."""
    return df * (1 - 2 / (9 * df) + z * math.sqrt(2 / (9 * df))) ** 3


def test_unseeded_token_distribution_is_unchanged(model_factory):
    # top_k=4 (a small vocabulary in effect), temperature 1: the distribution of the second
    # and third output tokens (the second verified as a draft in about half the requests)
    # over 1200 requests, with and without speculation, compared by a two-sample chi-square
    # test. The prompt repeats itself after its greedy continuation, so prompt lookup
    # drafts that continuation. Engines are seeded: the test is deterministic.
    model = model_factory("llama", logit_scale=1.0)
    plain, spec = engines(model, {**NGRAM, "adaptive": False}, seed=7, num_blocks=1024)
    p = plain.get_tokenizer().encode("one two three four five six seven")
    greedy = plain.generate([p], SamplingParams(temperature=0, max_tokens=4, ignore_eos=True),
                            use_tqdm=False)[0].outputs[0].token_ids
    prompt = p + greedy + p
    params = SamplingParams(temperature=1.0, top_k=4, max_tokens=3, ignore_eos=True)
    n = 1200

    def last_tokens(llm):
        return Counter(tuple(o.outputs[0].token_ids[1:]) for o in
                       llm.generate([prompt] * n, params, use_tqdm=False))

    a, b = last_tokens(plain), last_tokens(spec)
    stats = spec.engine.stats().spec_decode
    assert stats.num_drafts > n // 4
    assert 0 < stats.num_accepted_tokens < stats.num_draft_tokens
    keys = [k for k in set(a) | set(b) if a[k] + b[k] >= 10]
    chi2 = sum((a[k] - b[k]) ** 2 / (a[k] + b[k]) for k in keys)
    assert len(keys) >= 10
    assert chi2 < _chi_square_critical(len(keys) - 1), (a, b)


def test_bad_speculative_config_is_a_clear_error(llama_dir):
    with pytest.raises(ValueError, match="num_speculative_tokens"):
        LLM(llama_dir, speculative_config={"method": "ngram"})


def test_draft_model_greedy_equals_plain_and_frees_its_cache(model_factory, llama_dir):
    small = model_factory("llama", num_layers=1, hidden_size=32, seed=1)
    kwargs = dict(dtype="float32", block_size=8, num_blocks=40, max_num_batched_tokens=32)
    plain = LLM(llama_dir, **kwargs)
    params = SamplingParams(temperature=0, max_tokens=32, ignore_eos=True)
    want = token_ids(plain, PROMPTS, params)
    for draft, full_acceptance in [(llama_dir, True), (small, False)]:
        spec = LLM(llama_dir, speculative_config={"method": "draft_model", "model": draft,
                                                  "num_speculative_tokens": 3,
                                                  "adaptive": False}, **kwargs)
        assert token_ids(spec, PROMPTS, params) == want
        stats = spec.engine.stats().spec_decode
        assert stats.num_draft_tokens > 0
        # The target drafting for itself: every draft is accepted (its draft cache is right).
        assert (stats.num_accepted_tokens == stats.num_draft_tokens) == full_acceptance
        proposer = spec.engine.speculative.proposer
        assert not proposer.seqs and proposer.kv.stats().num_used_blocks == 0
        spec.engine.shutdown()


def test_draft_model_with_another_tokenizer_is_refused(llama_dir, tmp_path):
    from quire.testing.tiny_models import build_model, build_tokenizer

    other = str(tmp_path / "other")
    build_model(other, num_layers=1, hidden_size=32)
    build_tokenizer(other, vocab_size=300)  # a different vocabulary
    with pytest.raises(ValueError, match="does not share the target model's tokenizer"):
        LLM(llama_dir, dtype="float32", speculative_config={
            "method": "draft_model", "model": other, "num_speculative_tokens": 2})
