"""Structured outputs in the core, with a fake grammar engine: the bitmask reaches the
executor, constrained requests follow their grammar and stop when it is complete, invalid
or unsatisfiable constraints finish with an error, compilation never stalls the batch."""

from __future__ import annotations

import threading

import numpy as np
import pytest

from quire.core.engine import LLMEngine
from quire.core.executor import ModelOutput
from quire.core.sampling_params import SamplingParams, StructuredOutputsParams
from quire.core.spec_config import SpeculativeConfig
from quire.core.spec_decode import Proposer, SpecDecoder
from quire.core.structured_outputs import GrammarBackend, StructuredOutputManager
from tests.core.fakes import CountingExecutor, check_invariants, make_engine, run_to_completion


class WordMatcher:
    """Allows exactly the letters of one word, in order; "dead" allows nothing."""

    def __init__(self, word: list[int]) -> None:
        self.word, self.pos = word, 0

    def allowed(self) -> list[int]:
        return self.word[self.pos : self.pos + 1]

    def consume(self, token_id: int) -> bool:
        ok = 0 <= self.pos < len(self.word) and token_id == self.word[self.pos]
        self.pos += int(ok)
        return ok

    def is_terminated(self) -> bool:
        return self.pos == len(self.word)

    def validate(self, token_ids) -> int:
        n = 0
        while n < len(token_ids) and 0 <= self.pos + n < len(self.word) and \
                token_ids[n] == self.word[self.pos + n]:
            n += 1
        return n

    def rollback(self, num_tokens: int) -> None:
        self.pos -= num_tokens


class WordBackend(GrammarBackend):
    """regex = a word of letters a-z; "!" in it is a compile error; "dead" can't be met."""

    def __init__(self, gate: threading.Event | None = None) -> None:
        self.gate = gate

    def compile(self, spec):
        if self.gate is not None:
            self.gate.wait(10)
        if "!" in spec.regex:
            raise ValueError("'!' is not allowed")
        return [] if spec.regex == "dead" else [ord(c) - ord("a") for c in spec.regex]

    def matcher(self, compiled):
        m = WordMatcher(compiled)
        if not compiled:
            m.pos = -1  # nothing allowed, never terminated
        return m

    def fill_bitmask(self, matchers, bitmask):
        for m, row in matchers:
            bitmask[row] = 0
            for t in m.allowed() if m.pos >= 0 else []:
                bitmask[row, t // 32] |= np.int32(1 << (t % 32))


class MaskedExecutor(CountingExecutor):
    """Like CountingExecutor ((last + 1) % 26), but only among the tokens the mask allows."""

    def execute(self, batch):
        self.batches.append(batch)
        want = (batch.input_ids[batch.logits_indices].astype(np.int64) + 1) % 26
        mask = batch.sampling.token_bitmask
        if mask is None:
            return ModelOutput(want)
        bits = np.unpackbits(mask.view(np.uint8), axis=1, bitorder="little").astype(bool)
        out = [t if bits[i, t] else int(np.flatnonzero(bits[i])[0])
               for i, t in enumerate(want.tolist())]
        return ModelOutput(np.asarray(out, dtype=np.int64))


def engine_with(backend: GrammarBackend, **kwargs) -> LLMEngine:
    manager = StructuredOutputManager(lambda: backend, 100, eos_token_id=99)
    engine = make_engine(executor=MaskedExecutor(), **kwargs)
    engine.structured = manager
    return engine


def word(w: str, **kwargs) -> SamplingParams:
    return SamplingParams(max_tokens=10, ignore_eos=True,
                          structured_outputs=StructuredOutputsParams(regex=w), **kwargs)


def test_constrained_and_free_requests_share_steps():
    engine = engine_with(WordBackend())
    engine.add_request("ab", word("xyz"), request_id="c")
    engine.add_request("ab", SamplingParams(max_tokens=3, ignore_eos=True), request_id="f")
    done = run_to_completion(engine)
    assert done["c"].outputs[0].text == "xyz" and done["c"].outputs[0].finish_reason == "stop"
    assert done["f"].outputs[0].token_ids == [2, 3, 4]  # unconstrained: untouched
    masked = [b for b in engine.executor.batches if b.sampling.token_bitmask is not None]
    assert masked and all(b.sampling.token_bitmask.shape[1] == 4 for b in masked)  # 100/32
    assert engine.kv_cache.pool.num_free_blocks == engine.kv_cache.num_usable_blocks


def test_parallel_samples_each_follow_the_grammar():
    engine = engine_with(WordBackend())
    engine.add_request("a", word("hello", n=3, temperature=1.0), request_id="p")
    out = run_to_completion(engine)["p"]
    assert [c.text for c in out.outputs] == ["hello"] * 3


def test_invalid_constraint_is_an_error_others_run():
    engine = engine_with(WordBackend())
    engine.add_request("ab", word("no!"), request_id="bad")
    engine.add_request("ab", word("ok"), request_id="good")
    done = run_to_completion(engine)
    assert done["bad"].outputs[0].finish_reason == "error"
    assert "'!' is not allowed" in done["bad"].error
    assert done["good"].outputs[0].text == "ok"


def test_unsatisfiable_constraint_finishes_with_a_reason():
    engine = engine_with(WordBackend())
    engine.add_request("ab", word("dead"), request_id="d")
    out = run_to_completion(engine)["d"]
    assert out.outputs[0].finish_reason == "error" and "cannot be satisfied" in out.error
    assert engine.kv_cache.pool.num_free_blocks == engine.kv_cache.num_usable_blocks


def test_compilation_never_stalls_the_batch():
    gate = threading.Event()
    engine = engine_with(WordBackend(gate))
    engine.add_request("ab", word("zz"), request_id="slow")
    engine.add_request("ab", SamplingParams(max_tokens=4, ignore_eos=True), request_id="free")
    steps = 0
    while "free" not in {o.request_id for o in engine.step() if o.finished}:
        steps += 1
        assert steps < 20
    assert engine.has_unfinished_requests()  # "slow" still waits for its grammar
    gate.set()
    assert run_to_completion(engine)["slow"].outputs[0].text == "zz"


def test_abort_while_compiling_leaves_nothing():
    gate = threading.Event()
    engine = engine_with(WordBackend(gate))
    engine.add_request("ab", word("zz"), request_id="x")
    engine.abort_request("x")
    assert not engine.has_unfinished_requests()
    gate.set()


def test_constraints_survive_preemption():
    engine = engine_with(WordBackend(), num_blocks=9, max_num_batched_tokens=16,
                         max_model_len=32)
    for i in range(10):
        engine.add_request("abcdefgh"[: 1 + i % 8], word("quire"), request_id=str(i))
    done = run_to_completion(engine)
    assert engine.scheduler.num_preemptions > 0
    assert all(done[str(i)].outputs[0].text == "quire" for i in range(10))
    check_invariants(engine)


def test_constraint_params_validate():
    with pytest.raises(ValueError, match="exactly one"):
        StructuredOutputsParams(regex="a", json={"type": "object"})
    with pytest.raises(ValueError, match="exactly one"):
        StructuredOutputsParams()
    with pytest.raises(ValueError, match="non-empty"):
        StructuredOutputsParams(choice=[])
    engine = make_engine()  # no grammar backend
    with pytest.raises(ValueError, match="not available"):
        engine.add_request("a", word("x"))


def test_compiled_grammars_are_cached_and_bounded(monkeypatch):
    from quire.core import structured_outputs

    monkeypatch.setattr(structured_outputs, "CACHE_SIZE", 2)
    manager = StructuredOutputManager(WordBackend, 100, eos_token_id=99)
    a = manager.submit(StructuredOutputsParams(regex="ab"))
    assert manager.submit(StructuredOutputsParams(regex="ab")) is a  # cached
    for w in ("cd", "ef", "gh"):
        manager.submit(StructuredOutputsParams(regex=w))
    assert len(manager._cache) == 2
    assert a.result() == [0, 1]  # an evicted compilation still completes for its holder
    manager.shutdown()


class CountingProposer(Proposer):
    """Drafts (last + 1) % 26, (last + 2) % 26, ...: what MaskedExecutor samples unmasked."""

    def propose(self, requests, num_drafts):
        return [[(r.all_token_ids[-1] + j) % 26 for j in range(1, k + 1)]
                for r, k in zip(requests, num_drafts)]


@pytest.mark.parametrize("pattern, prompt", [("cdefxyz", "ab"), ("abc", "z"),
                                             ("bcdefghij", "a")])
def test_speculative_drafts_are_masked_per_position(pattern, prompt):
    """Drafts are cut where the grammar rejects them; each draft row is masked by the state
    after the drafts before it; tokens past the grammar's end are dropped."""
    plain = engine_with(WordBackend())
    plain.add_request(prompt, word(pattern), request_id="r")
    want = run_to_completion(plain)["r"].outputs[0]
    sd = SpecDecoder(SpeculativeConfig(method="ngram", num_speculative_tokens=3,
                                       adaptive=False), CountingProposer(), 64)
    engine = engine_with(WordBackend(), speculative=sd)
    engine.add_request(prompt, word(pattern), request_id="r")
    engine.add_request(prompt, SamplingParams(max_tokens=6, ignore_eos=True), request_id="f")
    done = run_to_completion(engine)
    got = done["r"].outputs[0]
    assert (got.text, got.token_ids, got.finish_reason) == \
        (want.text, want.token_ids, "stop") and got.text == pattern
    assert done["f"].outputs[0].token_ids == [(ord(prompt[-1]) - 97 + j) % 26
                                               for j in range(1, 7)]
    assert sd.stats.num_accepted_tokens > 0
    drafted = [b for b in engine.executor.batches
               if b.sampling.token_bitmask is not None and b.has_drafts]
    assert drafted and all(b.sampling.token_bitmask.shape[0] == len(b.logits_indices)
                           for b in drafted)
    assert engine.kv_cache.pool.num_free_blocks == engine.kv_cache.num_usable_blocks
