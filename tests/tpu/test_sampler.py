"""The on-device JAX sampler behaves like the torch sampler: the deterministic parts equal
it exactly, the random parts follow the same rules (filters, seeds)."""

from __future__ import annotations

import jax
import numpy as np
import torch

from quire.backends.torch.sampler import Sampler
from quire.backends.tpu.sampler import host_rows, sample
from quire.core.sampling_params import SamplingParams
from tests.torch.test_sampler import batch_for


def run(logits: np.ndarray, sb, seed: int = 0, num_logprobs: int = 0):
    rows = len(logits) + 3  # padded to a bucket, as the executor does
    padded = np.zeros((rows, logits.shape[1]), np.float32)
    padded[: len(logits)] = logits
    filter_top = bool((sb.top_k > 0).any() or (sb.top_p < 1).any())
    out = sample(padded, host_rows(sb, rows), jax.random.key(seed),
                 all_greedy=sb.all_greedy, filter_top=filter_top, num_logprobs=num_logprobs)
    return [None if x is None else np.asarray(x)[: len(logits)] for x in out]


def test_greedy_penalties_bans_and_logprobs_equal_torch():
    rng = np.random.default_rng(0)
    logits = rng.standard_normal((4, 50)).astype(np.float32) * 3
    params = [SamplingParams(temperature=0, repetition_penalty=1.5, logprobs=3),
              SamplingParams(temperature=0, frequency_penalty=0.7, presence_penalty=0.3),
              SamplingParams(temperature=0, min_tokens=5, stop_token_ids=[7]),
              SamplingParams(temperature=0)]
    top = logits.argmax(axis=1).tolist()
    outputs = [[top[0], 3], [top[1], top[1], 9], [], [1]]
    prompts = [[top[0]], [2], [1], [1]]
    sb = batch_for(params, outputs=outputs, prompts=prompts)
    sb.suppress_rows, sb.suppress_token_ids = np.array([2, 2]), np.array([top[2], 7])
    want = Sampler(0)(torch.from_numpy(logits), sb)
    ids, sampled_lp, top_ids, top_lp = run(logits, sb, num_logprobs=5)
    assert ids.tolist() == want.token_ids.tolist()
    assert ids[2] != top[2]  # the banned token is not picked
    np.testing.assert_allclose(sampled_lp, want.sampled_logprobs.numpy(), rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(top_ids[:, :3], want.top_token_ids.numpy())
    np.testing.assert_allclose(top_lp[:, :3], want.top_logprobs.numpy(), rtol=1e-5, atol=1e-5)


def test_filters_leave_one_token_equal_greedy():
    rng = np.random.default_rng(1)
    logits = rng.standard_normal((3, 40)).astype(np.float32)
    sb = batch_for([SamplingParams(temperature=1.0, top_k=1),
                    SamplingParams(temperature=1.0, top_p=1e-6),
                    SamplingParams(temperature=1.0, min_p=1.0)])
    for seed in range(5):
        ids, *_ = run(logits, sb, seed)
        assert ids.tolist() == logits.argmax(axis=1).tolist()


def test_min_p_and_top_k_never_sample_outside():
    logits = np.log(np.tile([[0.5, 0.25, 0.15, 0.1]], (300, 1))).astype(np.float32)
    sb = batch_for([SamplingParams(temperature=1.0, min_p=0.4)] * 150
                   + [SamplingParams(temperature=1.0, top_k=3)] * 150)
    ids, *_ = run(logits, sb)
    assert set(ids[:150].tolist()) == {0, 1}  # 0.15 < 0.4 * 0.5
    assert set(ids[150:].tolist()) == {0, 1, 2}


def test_temperature_sampling_follows_the_distribution():
    probs = np.array([0.6, 0.3, 0.1])
    logits = np.log(np.tile(probs, (3000, 1))).astype(np.float32)
    ids, *_ = run(logits, batch_for([SamplingParams(temperature=1.0)] * 3000))
    freq = np.bincount(ids, minlength=3) / len(ids)
    np.testing.assert_allclose(freq, probs, atol=0.04)


def test_seeded_rows_repeat_whatever_the_batch():
    rng = np.random.default_rng(2)
    logits = rng.standard_normal((3, 200)).astype(np.float32)
    seeded = SamplingParams(temperature=1.0, seed=1234)
    alone, *_ = run(logits[:1], batch_for([seeded]), seed=0)
    mixed, *_ = run(logits[[1, 0, 2]], batch_for([SamplingParams(temperature=1.0), seeded,
                                                  SamplingParams(temperature=0.5)]), seed=99)
    assert alone[0] == mixed[1]
    draws = {int(run(logits[:1], batch_for([SamplingParams(temperature=1.0)]), seed=s)[0][0])
             for s in range(8)}
    assert len(draws) > 1  # unseeded rows do vary with the step key


def test_draft_rows_verify_alike_on_torch_and_jax():
    """Rows of speculative decoding (k drafts + 1 per request, each with its own output
    step's penalties and bans): greedy samples equal torch's row for row, so the core
    accepts the same drafts; sampled rows accept a one-hot draft d with probability p(d) on
    both (the accept/resample rule for deterministic drafts)."""
    from quire.core.batch import build_sampling_batch
    from quire.core.spec_decode import accepted_counts
    from tests.core.fakes import make_request

    rng = np.random.default_rng(3)
    logits = rng.standard_normal((6, 40)).astype(np.float32) * 3
    top = logits.argmax(axis=1).tolist()
    reqs = [make_request("a", [1, 2], SamplingParams(temperature=0, presence_penalty=1.5),
                         None, 4, 20),
            make_request("b", [3], SamplingParams(temperature=0, min_tokens=2), 5, 4, 20)]
    # a verifies drafts [top0, top1, 9]: row 1 sees top0 penalized; b verifies [top4].
    drafts = [[top[0], top[1], 9], [top[4]]]
    sb = build_sampling_batch(reqs, drafts)
    assert sb.output_token_ids[1].tolist()[:1] == [top[0]]
    want = Sampler(0)(torch.from_numpy(logits), sb).token_ids.numpy()
    got, *_ = run(logits, sb)
    assert got.tolist() == want.tolist()
    flat_drafts = np.array([top[0], top[1], 9, -1, top[4], -1])
    row_start = np.array([0, 4, 6])
    np.testing.assert_array_equal(accepted_counts(got, flat_drafts, row_start),
                                  accepted_counts(want, flat_drafts, row_start))

    # Sampled: one row per seed, the same distribution, draft = the second most likely.
    n = 2000
    base = (rng.standard_normal(40) * 1.5).astype(np.float32)
    p = np.exp(base - base.max())
    p /= p.sum()
    draft = int(np.argsort(-p)[1])
    params = [SamplingParams(temperature=1.0, seed=s) for s in range(n)]
    sb = batch_for(params)
    tile = np.tile(base, (n, 1))
    rate_torch = float((Sampler(0)(torch.from_numpy(tile), sb).token_ids.numpy() == draft)
                       .mean())
    rate_jax = float((run(tile, sb)[0] == draft).mean())
    tol = 4 * np.sqrt(p[draft] * (1 - p[draft]) / n)
    assert abs(rate_torch - p[draft]) < tol and abs(rate_jax - p[draft]) < tol
