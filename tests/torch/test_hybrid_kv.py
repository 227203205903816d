"""Hybrid KV cache end to end: a Gemma 3 model's sliding-window layers keep only the window
while its global layers keep everything, on every backend family, equal to HF."""

from __future__ import annotations

import pytest

from quire import LLM, SamplingParams
from quire.core.kv_groups import KVCacheGroup
from tests.torch.hf_reference import assert_greedy_match, hf_greedy
from tests.torch.test_hf_equivalence import PREFIX

LENGTH = 96  # tokens per sequence, 6x the window


@pytest.mark.parametrize("backend", ["cpu", "tpu"])
def test_gemma3_local_layers_hold_only_the_window(model_factory, backend):
    """(The conformance kit runs a shorter check on every backend declaring
    hybrid_kv_cache, triton-interpret included.)"""
    model_dir = model_factory("gemma3", sliding_window=16)  # layers: sliding, full
    # The memory of 10 whole-model blocks of 16 tokens: 9 usable, where two 96-token
    # sequences need 12 and would preempt each other. As pages of one layer's block: 19
    # usable, and the two need 2 x (6 global + at most 3 local).
    llm = LLM(model_dir, backend=backend, dtype="float32", block_size=16, num_blocks=10,
              max_num_seqs=2, max_num_batched_tokens=16)
    engine = llm.engine
    assert engine.kv_cache.groups == (KVCacheGroup((1,), None), KVCacheGroup((0,), 16))
    assert engine.kv_cache.pool.num_usable_blocks == 19
    local = engine.kv_cache.managers[1]
    prompts = [llm.get_tokenizer().encode(p) for p in (PREFIX, "Hello world, " + PREFIX)]
    params = [SamplingParams(temperature=0, max_tokens=LENGTH - len(p), ignore_eos=True)
              for p in prompts]
    for i, (p, sp) in enumerate(zip(prompts, params)):
        engine.add_request(p, sp, request_id=str(i))
    outs, held = {}, []
    while engine.has_unfinished_requests():
        for o in engine.step():
            if o.finished:
                outs[o.request_id] = o.outputs[0].token_ids
        held.append(sum(1 for blocks in local.req_to_blocks.values() for b in blocks
                        if b.block_id))
    # Decoding, each sequence's sliding layer holds the <= 2 blocks its window spans.
    assert max(held[-40:]) <= 2 * 2
    assert engine.stats().num_used_blocks == 0 and held[-1] == 0
    assert engine.stats().num_preemptions == 0
    refs = hf_greedy(model_dir, prompts, LENGTH - min(len(p) for p in prompts))
    compared = sum(assert_greedy_match(outs[str(i)], ref[:len(outs[str(i)])], gaps)
                   for i, (ref, gaps) in enumerate(refs))
    assert compared >= 60


def test_disabled_hybrid_manager_keeps_every_block(model_factory):
    """--disable-hybrid-kv-cache-manager (vLLM's name): one table, every layer's blocks
    kept; in the same memory the two sequences above no longer fit together."""
    from quire.core.kv_cache_manager import KVCacheManager

    model_dir = model_factory("gemma3", sliding_window=16)
    llm = LLM(model_dir, dtype="float32", block_size=16, num_blocks=10, max_num_seqs=2,
              max_num_batched_tokens=16, disable_hybrid_kv_cache_manager=True)
    assert type(llm.engine.kv_cache) is KVCacheManager
    prompts = [PREFIX, "Hello world, " + PREFIX]
    outs = llm.generate(prompts, SamplingParams(temperature=0, max_tokens=LENGTH - 20,
                                                ignore_eos=True), use_tqdm=False)
    assert all(len(o.outputs[0].token_ids) == LENGTH - 20 for o in outs)
    assert llm.engine.stats().num_preemptions > 0
