"""The server with --speculative-config: streamed greedy text equals the plain server's, and
/metrics carries the acceptance counters."""

from __future__ import annotations

import json

import httpx
import pytest

from tests.server_fixtures import Server

PROMPT = "one two three one two three one two three one"


@pytest.fixture(scope="module")
def spec_server(llama_dir):
    srv = Server(llama_dir, "--speculative-config",
                 json.dumps({"method": "ngram", "num_speculative_tokens": 3,
                             "adaptive": False}))
    yield srv
    srv.stop()


def _stream(server, body):
    text = ""
    with httpx.stream("POST", server.url + "/v1/completions", json={**body, "stream": True},
                      timeout=60) as r:
        assert r.status_code == 200
        for line in r.iter_lines():
            if line.startswith("data: ") and line != "data: [DONE]":
                for choice in json.loads(line[6:])["choices"]:
                    text += choice["text"]
    return text


def test_streamed_greedy_text_equals_plain_server(server, spec_server):
    body = {"model": "tiny", "prompt": PROMPT, "max_tokens": 40, "temperature": 0,
            "ignore_eos": True}
    assert _stream(spec_server, body) == _stream(server, body)
    drafts = spec_server.metric("quire:spec_decode_num_drafts_total")
    proposed = spec_server.metric("quire:spec_decode_num_draft_tokens_total")
    accepted = spec_server.metric("quire:spec_decode_num_accepted_tokens_total")
    assert drafts > 0 and 0 < accepted <= proposed
    text = httpx.get(spec_server.url + "/metrics").text
    assert 'quire:spec_decode_num_accepted_tokens_per_pos_total{position="0"}' in text
    assert "quire:spec_decode_num_drafts_total" not in httpx.get(server.url + "/metrics").text


def test_bad_speculative_config_fails_at_start(llama_dir):
    with pytest.raises(RuntimeError, match="num_speculative_tokens"):
        Server(llama_dir, "--speculative-config", '{"method": "ngram"}')
