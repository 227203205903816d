from __future__ import annotations

import numpy as np
import torch

from quire.backends.torch.sampler import Sampler, apply_penalties, apply_top_k_top_p
from quire.core.batch import build_sampling_batch
from quire.core.sampling_params import SamplingParams
from tests.core.fakes import make_request


def batch_for(params: list[SamplingParams], outputs: list[list[int]] | None = None,
              prompts: list[list[int]] | None = None):
    reqs = []
    for i, p in enumerate(params):
        r = make_request(str(i), (prompts or [[1]] * len(params))[i], p, 0, 4, 100)
        for t in (outputs or [[]] * len(params))[i]:
            r.append_token(t)
        reqs.append(r)
    return build_sampling_batch(reqs)


def test_top_k_top_p_masks():
    logits = torch.log(torch.tensor([[0.5, 0.3, 0.15, 0.05], [0.5, 0.3, 0.15, 0.05]]))
    out = apply_top_k_top_p(logits, torch.tensor([2, 0]), torch.tensor([1.0, 0.7]))
    assert torch.isfinite(out[0]).tolist() == [True, True, False, False]
    # top_p 0.7: 0.5 alone < 0.7, so 0.3 is needed too; 0.15 is not.
    assert torch.isfinite(out[1]).tolist() == [True, True, False, False]
    out = apply_top_k_top_p(logits, torch.tensor([0, 0]), torch.tensor([1.0, 0.81]))
    assert torch.isfinite(out[1]).tolist() == [True, True, True, False]


def test_min_p_never_samples_below_threshold():
    sampler = Sampler(seed=0)
    logits = torch.log(torch.tensor([[0.6, 0.3, 0.1]])).repeat(200, 1)
    sb = batch_for([SamplingParams(temperature=1.0, min_p=0.4)] * 200)
    ids = sampler(logits, sb).token_ids
    assert set(ids.tolist()) == {0, 1}  # 0.1 < 0.4 * 0.6


def test_penalties():
    logits = torch.tensor([[2.0, -2.0, 1.0, 0.5]])
    sb = batch_for([SamplingParams(repetition_penalty=2.0, frequency_penalty=0.5,
                                   presence_penalty=0.25)],
                   outputs=[[2, 2]], prompts=[[1]])
    out = apply_penalties(logits, sb)
    # token 1 (prompt): -2*2; token 2 (output twice): 1/2 - 0.5*2 - 0.25; others untouched
    torch.testing.assert_close(out, torch.tensor([[2.0, -4.0, -0.75, 0.5]]))


def test_seeded_rows_reproducible_regardless_of_batch():
    torch.manual_seed(0)
    logits = torch.randn(1, 50)
    seeded = SamplingParams(temperature=1.0, seed=1234)
    alone = Sampler(seed=1)(logits, batch_for([seeded])).token_ids
    crowd_logits = torch.cat([torch.randn(3, 50), logits])
    crowd = Sampler(seed=99)(crowd_logits, batch_for([SamplingParams(temperature=1.0)] * 3 +
                                                     [seeded])).token_ids
    assert alone[0] == crowd[3]


def test_sampling_follows_distribution():
    sampler = Sampler(seed=0)
    probs = torch.tensor([0.7, 0.2, 0.1])
    logits = probs.log().repeat(4000, 1)
    ids = sampler(logits, batch_for([SamplingParams(temperature=1.0)] * 4000)).token_ids
    freq = np.bincount(ids.numpy(), minlength=3) / 4000
    np.testing.assert_allclose(freq, probs.numpy(), atol=0.03)


def test_greedy_rows_and_min_tokens_suppression_and_logprobs():
    logits = torch.tensor([[0.0, 5.0, 1.0], [0.0, 5.0, 1.0]])
    sb = batch_for([SamplingParams(temperature=0, logprobs=2),
                    SamplingParams(temperature=0, min_tokens=3, stop_token_ids=[1])])
    out = Sampler()(logits, sb)
    assert out.token_ids.tolist() == [1, 2]  # row 1 may not stop (token 1) yet
    lp = torch.log_softmax(logits[0], 0)
    torch.testing.assert_close(out.sampled_logprobs[0], lp[1])
    assert out.top_token_ids[0].tolist() == [1, 2]
