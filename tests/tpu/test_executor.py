"""The tpu executor end to end on JAX's CPU device: greedy equal to the cpu backend for
every architecture, the Pallas kernel in the loop, bounded compilations, selection."""

from __future__ import annotations

import numpy as np
import pytest

from quire import LLM, SamplingParams
from quire.plugins.manager import load_plugins
from quire.plugins.selection import select_backend

NEAR_TIE = 1e-3
PROMPTS = ["Hello world", "the scheduler serves paged attention blocks to every request",
           "a", "Paris is the capital of France, a city on a river", "one two three four"]


def assert_same_greedy(ref_outs, got_outs) -> int:
    """Token equality up to the first step where the reference's top-2 logprobs nearly tie;
    returns the number of tokens compared."""
    compared = 0
    for r, g in zip(ref_outs, got_outs):
        ref_ids = r.outputs[0].token_ids
        n = len(ref_ids)
        for i, entry in enumerate(r.outputs[0].logprobs):
            top = sorted((lp.logprob for lp in entry.values()), reverse=True)
            if top[0] - top[1] < NEAR_TIE:
                n = i
                break
        assert g.outputs[0].token_ids[:n] == ref_ids[:n], (r.prompt, g.outputs[0].token_ids,
                                                           ref_ids)
        compared += n
    return compared


def _run(model_dir: str, backend: str, **kwargs):
    llm = LLM(model_dir, backend=backend, dtype="float32", block_size=16, num_blocks=24,
              max_num_batched_tokens=64, **kwargs)
    params = SamplingParams(temperature=0, max_tokens=12, ignore_eos=True, logprobs=2)
    return llm, llm.generate(PROMPTS, params, use_tqdm=False)


@pytest.mark.parametrize("arch,kwargs", [
    ("llama", {}), ("llama", {"tie_word_embeddings": True}), ("mistral", {}), ("qwen2", {}),
    ("qwen3", {}),
])
def test_greedy_matches_cpu_backend(model_factory, arch, kwargs):
    model_dir = model_factory(arch, **kwargs)
    _, ref = _run(model_dir, "cpu")
    llm, got = _run(model_dir, "tpu")
    assert llm.engine.backend_name == "tpu"
    assert assert_same_greedy(ref, got) >= 0.6 * 12 * len(PROMPTS)
    # logprobs come back too, close to the cpu backend's
    np.testing.assert_allclose(got[0].outputs[0].cumulative_logprob,
                               ref[0].outputs[0].cumulative_logprob, rtol=1e-3, atol=1e-3)
    assert llm.engine.stats().num_used_blocks == 0


def test_pallas_kernel_in_the_loop(model_factory, monkeypatch):
    """The whole executor with the Pallas kernel (TPU interpreter) instead of the jnp one,
    including chunked prefill (a 64-token budget) and prefix-cache hits."""
    monkeypatch.setenv("QUIRE_TPU_ATTENTION", "pallas-interpret")
    model_dir = model_factory("qwen3")
    _, ref = _run(model_dir, "cpu")
    llm, got = _run(model_dir, "tpu")
    assert llm.engine.executor.attention_choice == "pallas-interpret"
    assert assert_same_greedy(ref, got) >= 0.6 * 12 * len(PROMPTS)


def test_compilations_bounded_by_buckets(model_factory):
    llm = LLM(model_factory("llama"), backend="tpu", dtype="float32", block_size=16,
              num_blocks=64, max_num_batched_tokens=64, max_num_seqs=8)
    executor = llm.engine.executor
    params = SamplingParams(temperature=0, max_tokens=6, ignore_eos=True)
    llm.generate(["one two three four five six", "a b", "hello"], params, use_tqdm=False)
    first = executor.num_compilations()
    caps = executor.capabilities()
    assert 1 <= first <= len(caps.token_buckets) * len(caps.request_buckets)
    # New prompt lengths and counts that fall in the same buckets: nothing new compiles.
    llm.generate(["seven eight nine ten", "the cache", "paged blocks", "x"], params,
                 use_tqdm=False)
    assert executor.num_compilations() == first


def test_selection_is_explicit_only_without_tpu(monkeypatch):
    from quire.backends.tpu.plugin import tpu_present

    if tpu_present():
        pytest.skip("this machine has a TPU: tpu is chosen automatically here")
    monkeypatch.delenv("QUIRE_BACKEND", raising=False)
    plugins = load_plugins()
    assert select_backend(plugins, None).spec.name != "tpu"
    chosen = select_backend(plugins, "tpu")
    assert chosen.spec.name == "tpu"
    assert "CPU device" in chosen.availability.reason
    monkeypatch.setenv("QUIRE_BACKEND", "tpu")
    assert select_backend(plugins, None).spec.name == "tpu"


def test_bf16_runs_and_unsupported_dtype_is_clear(model_factory):
    model_dir = model_factory("llama")
    llm = LLM(model_dir, backend="tpu", dtype="bfloat16", block_size=16, num_blocks=16)
    out = llm.generate(["Hello"], SamplingParams(temperature=0, max_tokens=4, ignore_eos=True),
                       use_tqdm=False)
    assert len(out[0].outputs[0].token_ids) == 4
    with pytest.raises(ValueError, match="float16"):
        LLM(model_dir, backend="tpu", dtype="float16", block_size=16, num_blocks=16)
