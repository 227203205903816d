from __future__ import annotations

import pytest

from quire.core.config import EngineConfig
from quire.core.sampling_params import SamplingParams


@pytest.mark.parametrize("kwargs, match", [
    ({"n": 0}, "n must be"),
    ({"temperature": -1}, "temperature"),
    ({"top_p": 0}, "top_p"),
    ({"top_p": 1.5}, "top_p"),
    ({"top_k": -2}, "top_k"),
    ({"min_p": 2}, "min_p"),
    ({"presence_penalty": 3}, "presence_penalty"),
    ({"repetition_penalty": 0}, "repetition_penalty"),
    ({"max_tokens": 0}, "max_tokens"),
    ({"min_tokens": 5, "max_tokens": 2}, "min_tokens"),
    ({"stop": [""]}, "stop"),
    ({"stop_token_ids": [-1]}, "stop_token_ids"),
    ({"n": 2, "temperature": 0}, "identical"),
    ({"logprobs": -1}, "logprobs"),
    ({"temperature": "hot"}, "number"),
])
def test_invalid_params_rejected(kwargs, match):
    with pytest.raises(ValueError, match=match):
        SamplingParams(**kwargs)


def test_normalization():
    p = SamplingParams(stop="x", top_k=-1)
    assert p.stop_strings == ("x",) and p.top_k == 0 and not p.is_greedy
    assert SamplingParams(temperature=0).is_greedy


@pytest.mark.parametrize("kwargs", [
    {"dtype": "float64"}, {"block_size": 0}, {"num_blocks": 1}, {"max_num_seqs": -1},
    {"max_model_len": 0}, {"backend": ""},
])
def test_engine_config_rejects(kwargs):
    with pytest.raises(ValueError):
        EngineConfig(**kwargs)
