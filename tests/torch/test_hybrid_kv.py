"""Hybrid KV cache end to end: a Gemma 3 model's sliding-window layers keep only the window
while its global layers keep everything, on every backend family, equal to HF."""

from __future__ import annotations

import pytest

from quire import LLM, SamplingParams
from tests.torch.hf_reference import assert_greedy_match, hf_greedy
from tests.torch.test_hf_equivalence import PREFIX

LENGTH = 96  # tokens per sequence, 6x the window


@pytest.mark.parametrize("backend", ["cpu", "tpu"])
def test_gemma3_local_layers_hold_only_the_window(model_factory, backend):
    """(The conformance kit runs a shorter check on every backend declaring
    hybrid_kv_cache, triton-interpret included.)"""
    model_dir = model_factory("gemma3", sliding_window=16)  # layers: sliding, full
    # The memory of 12 whole-model blocks of 16 tokens (176 usable tokens: two 96-token
    # sequences would preempt each other). Split by window, the local layer needs
    # 2 x (cdiv(15, 16) + 2) + 2 x cdiv(16, 16) + 1 = 9 blocks, so the global layer gets
    # 24 - 9 = 15, room for both (12 blocks).
    llm = LLM(model_dir, backend=backend, dtype="float32", block_size=16, num_blocks=12,
              max_num_seqs=2, max_num_batched_tokens=16)
    engine = llm.engine
    full, local = engine.kv_cache.groups
    assert (full.layers, full.window, full.num_blocks) == ((1,), None, 15)
    assert (local.layers, local.window, local.num_blocks) == ((0,), 16, 9)
    prompts = [llm.get_tokenizer().encode(p) for p in (PREFIX, "Hello world, " + PREFIX)]
    params = [SamplingParams(temperature=0, max_tokens=LENGTH - len(p), ignore_eos=True)
              for p in prompts]
    for i, (p, sp) in enumerate(zip(prompts, params)):
        engine.add_request(p, sp, request_id=str(i))
    outs, held = {}, []
    local_pool = engine.kv_cache.managers[1].pool
    while engine.has_unfinished_requests():
        for o in engine.step():
            if o.finished:
                outs[o.request_id] = o.outputs[0].token_ids
        held.append(local_pool.num_usable_blocks - local_pool.num_free_blocks)
    # Decoding, each sequence holds at most the window's blocks plus the one being written.
    assert max(held[-40:]) <= 2 * (16 // 16 + 2)
    assert engine.stats().num_used_blocks == 0 and held[-1] == 0
    assert engine.stats().num_preemptions == 0
    refs = hf_greedy(model_dir, prompts, LENGTH - min(len(p) for p in prompts))
    compared = sum(assert_greedy_match(outs[str(i)], ref[:len(outs[str(i)])], gaps)
                   for i, (ref, gaps) in enumerate(refs))
    assert compared >= 60
