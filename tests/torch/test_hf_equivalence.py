"""The CPU backend's greedy output equals HF transformers', token for token."""

from __future__ import annotations

import pytest

from quire import LLM, SamplingParams
from tests.torch.hf_reference import assert_greedy_match, hf_greedy

MAX_NEW = 24
PREFIX = "the scheduler serves paged attention blocks to every request in the batch and"
PROMPTS = [
    "Hello world",
    PREFIX + " the cache",
    PREFIX + " one two three",
    "Paris is the capital of France, a city on a river",
    "a",
    PREFIX,
]


def encode_all(llm: LLM) -> list[list[int]]:
    return [llm.get_tokenizer().encode(p) for p in PROMPTS]


@pytest.mark.parametrize("arch,kwargs", [
    ("llama", {}),
    ("llama", {"tie_word_embeddings": True}),
    ("mistral", {}),
    ("mistral", {"sliding_window": 8}),  # blocks before the window are given back
    ("qwen2", {}),
    ("qwen3", {}),
    ("gemma2", {}),
    ("gemma3", {}),
    ("phi3", {}),
    ("mixtral", {}),
    ("qwen3_moe", {}),
])
def test_greedy_matches_hf(model_factory, arch, kwargs):
    model_dir = model_factory(arch, **kwargs)
    # 15 usable blocks of 4 tokens: far less than the batch needs, so requests get
    # preempted and recomputed; shared prefixes hit the prefix cache.
    llm = LLM(model_dir, dtype="float32", block_size=4, num_blocks=16,
              max_num_batched_tokens=32)
    prompts = encode_all(llm)
    outs = llm.generate(prompts, SamplingParams(temperature=0, max_tokens=MAX_NEW,
                                                ignore_eos=True), use_tqdm=False)
    stats = llm.engine.stats()
    refs = hf_greedy(model_dir, prompts, MAX_NEW)
    compared = sum(assert_greedy_match(out.outputs[0].token_ids, ref, gaps)
                   for out, (ref, gaps) in zip(outs, refs))
    # Near ties are rare with these weights: most tokens must actually be compared.
    assert compared >= 0.6 * MAX_NEW * len(PROMPTS), compared
    assert stats.num_preemptions > 0
    assert stats.prefix_cache_hits > 0
    assert stats.num_used_blocks == 0  # everything freed at the end
    if kwargs.get("sliding_window"):
        assert llm.engine.model_info.kv_window == kwargs["sliding_window"]


def test_sliding_window_holds_only_the_window(model_factory):
    """A model whose every layer slides (window 8) keeps only the blocks its next query can
    see: a 70-token sequence in blocks of 4 never holds more than 4 of its 18 blocks, and
    its output equals HF's."""
    model_dir = model_factory("mistral", sliding_window=8)
    llm = LLM(model_dir, dtype="float32", block_size=4, num_blocks=64)
    prompt = llm.get_tokenizer().encode(PREFIX)
    engine = llm.engine
    engine.add_request(prompt, SamplingParams(temperature=0, max_tokens=70 - len(prompt),
                                              ignore_eos=True), request_id="r")
    held, out = [], None
    while engine.has_unfinished_requests():
        for o in engine.step():
            out = o
        held.append(engine.stats().num_used_blocks)
    assert max(held[1:]) <= 8 // 4 + 2 and held[-1] == 0
    (ref, gaps), = hf_greedy(model_dir, [prompt], 70 - len(prompt))
    assert assert_greedy_match(out.outputs[0].token_ids, ref, gaps) >= 20


def test_greedy_matches_hf_roomy_cache_bf16_runs(model_factory):
    """bf16 runs end to end (its numbers differ from fp32 HF by design, so no equality)."""
    llm = LLM(model_factory("llama"), dtype="bfloat16", block_size=16)
    out = llm.generate(PROMPTS, SamplingParams(temperature=0, max_tokens=8, ignore_eos=True),
                       use_tqdm=False)
    assert all(len(o.outputs[0].token_ids) == 8 for o in out)
    assert llm.engine.model_info.dtype == "bfloat16"
