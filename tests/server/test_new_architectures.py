"""The wave-2 architectures through the OpenAI server: a sliding-window model with
soft-capping (Gemma 2) and a mixture of experts (Qwen3-MoE) answer completions, streamed
and not, with the same greedy tokens as the offline API."""

from __future__ import annotations

import json

import httpx
import pytest

from quire import LLM, SamplingParams
from tests.server_fixtures import Server

PROMPT = "the scheduler serves paged attention blocks to every request in the batch"


@pytest.mark.parametrize("arch", ["gemma2", "qwen3_moe"])
def test_served_greedy_equals_offline(model_factory, arch):
    model_dir = model_factory(arch)
    offline = LLM(model_dir, dtype="float32", block_size=8, num_blocks=256).generate(
        [PROMPT], SamplingParams(temperature=0, max_tokens=12, ignore_eos=True),
        use_tqdm=False)[0].outputs[0].text
    server = Server(model_dir)
    try:
        body = {"model": "tiny", "prompt": PROMPT, "max_tokens": 12, "temperature": 0,
                "ignore_eos": True}
        r = httpx.post(server.url + "/v1/completions", json=body, timeout=60)
        assert r.status_code == 200, r.text
        assert r.json()["choices"][0]["text"] == offline
        with httpx.stream("POST", server.url + "/v1/completions",
                          json={**body, "stream": True}, timeout=60) as s:
            chunks = [line for line in s.iter_lines() if line.startswith("data: {")]
        streamed = "".join(json.loads(c[6:])["choices"][0]["text"] for c in chunks)
        assert streamed == offline
    finally:
        server.stop()
