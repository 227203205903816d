"""Structured outputs through llguidance on the cpu backend, offline: every output of a
random-weight model satisfies its constraint (only the mask keeps it valid)."""

from __future__ import annotations

import pytest

from quire import LLM, SamplingParams, StructuredOutputsParams
from quire.testing.structured_cases import CASES


@pytest.fixture(scope="module")
def llm(llama_dir):
    return LLM(llama_dir, backend="cpu", dtype="float32", num_blocks=256)


@pytest.mark.parametrize("name", sorted(CASES))
def test_outputs_satisfy_their_constraint(llm, name):
    spec, check = CASES[name]
    params = [SamplingParams(temperature=t, seed=s, max_tokens=400, structured_outputs=spec)
              for t, s in ((0.0, None), (1.0, 1), (1.0, 2))]
    outs = llm.generate(["hello", "the sky is", "x y z"], params, use_tqdm=False)
    for out in outs:
        c = out.outputs[0]
        assert c.finish_reason == "stop", (name, c.text, c.finish_reason, out.error)
        check(c.text)


def test_mixed_batch_with_n_and_plain_requests(llm):
    spec, check = CASES["json-matrix"]
    outs = llm.generate(
        ["a", "b"],
        [SamplingParams(n=3, temperature=1.0, max_tokens=200, structured_outputs=spec),
         SamplingParams(temperature=0, max_tokens=8, ignore_eos=True)], use_tqdm=False)
    for c in outs[0].outputs:
        check(c.text)
    assert len(outs[1].outputs[0].token_ids) == 8  # the unconstrained request is untouched


def test_bad_schema_finishes_with_error(llm):
    bad = StructuredOutputsParams(json={"type": "object", "properties": {"a": {"type": "no"}}})
    (out,) = llm.generate(["a"], SamplingParams(max_tokens=5, structured_outputs=bad),
                          use_tqdm=False)
    assert out.outputs[0].finish_reason == "error" and "invalid structured output" in out.error


def test_json_object_tokens_are_all_allowed(llm):
    """Unbounded JSON (any object): a random model may not finish it, but every token it
    produced is one the grammar allows, and a finished output parses."""
    import json

    spec = StructuredOutputsParams(json_object=True)
    outs = llm.generate(["a", "b"], SamplingParams(temperature=1.0, seed=3, max_tokens=40,
                                                   structured_outputs=spec), use_tqdm=False)
    backend = llm.engine.structured.backend()
    for out in outs:
        matcher = backend.matcher(backend.compile(spec))
        c = out.outputs[0]
        assert c.text.startswith("{")
        assert all(matcher.consume(t) for t in c.token_ids), c.text
        if c.finish_reason == "stop":
            assert isinstance(json.loads(c.text), dict)


@pytest.mark.parametrize("name", sorted(CASES))
def test_speculative_decoding_under_constraints(llm, llama_dir, name):
    """With n-gram drafts (each draft row masked by the grammar state after the drafts
    before it), greedy outputs equal those without speculation and seeded ones stay valid."""
    spec_llm = LLM(llama_dir, backend="cpu", dtype="float32", num_blocks=256,
                   speculative_config={"method": "ngram", "num_speculative_tokens": 4,
                                       "adaptive": False})
    spec, check = CASES[name]
    params = [SamplingParams(temperature=t, seed=s, max_tokens=400, structured_outputs=spec)
              for t, s in ((0.0, None), (1.0, 1), (1.0, 2))]
    prompts = ["hello", "the sky is", "x y z"]
    want = llm.generate(prompts, params, use_tqdm=False)
    got = spec_llm.generate(prompts, params, use_tqdm=False)
    for w, g in zip(want, got):
        assert g.outputs[0].token_ids == w.outputs[0].token_ids, name
        assert g.outputs[0].finish_reason == "stop", (g.outputs[0].text, g.error)
        check(g.outputs[0].text)
    if name != "choice":  # (choices are too short for prompt lookup to find anything)
        assert spec_llm.engine.stats().spec_decode.num_drafts > 0, "nothing was drafted"
    spec_llm.engine.shutdown()
