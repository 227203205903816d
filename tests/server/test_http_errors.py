"""Bad input gets an OpenAI-style error and a 4xx, never a 500 or a hung stream."""

from __future__ import annotations

import json
import time

import httpx
import pytest

from tests.server_fixtures import Server


def post(server, path, body, raw=False):
    content = body if raw else json.dumps(body)
    return httpx.post(server.url + path, content=content,
                      headers={"content-type": "application/json"}, timeout=30)


@pytest.mark.parametrize("path,body,status,needle", [
    ("/v1/completions", "{not json", 400, "not valid JSON"),
    ("/v1/completions", {"prompt": 5}, 400, "prompt"),
    ("/v1/completions", {"prompt": "x", "max_tokens": "many"}, 400, "max_tokens"),
    ("/v1/completions", {"prompt": "x", "temperature": -1}, 400, "temperature"),
    ("/v1/completions", {"prompt": "x", "top_p": 2}, 400, "top_p"),
    ("/v1/completions", {"prompt": "x", "n": 0}, 400, "n must be"),
    ("/v1/completions", {"prompt": "x", "logprobs": 50}, 400, "logprobs"),
    ("/v1/completions", {"prompt": "x", "best_of": 3}, 400, "best_of"),
    ("/v1/completions", {"prompt": [], "max_tokens": 2}, 400, "empty"),
    ("/v1/completions", {"prompt": [1, 999999]}, 400, "token ids"),
    ("/v1/completions", {"prompt": "one " * 2000}, 400, "max_model_len"),
    ("/v1/completions", {"prompt": "x", "max_tokens": 5000}, 400, "maximum context length"),
    ("/v1/completions", {"prompt": "x", "model": "gpt-4"}, 404, "does not exist"),
    ("/v1/completions", {"prompt": "x", "stream": True, "temperature": -1}, 400, "temperature"),
    ("/v1/chat/completions", {"messages": []}, 400, "messages"),
    ("/v1/chat/completions", {"messages": [{"role": "wizard", "content": "x"}]}, 400, "role"),
    ("/v1/chat/completions", {"messages": [{"role": "user", "content": [
        {"type": "image_url", "image_url": {"url": "x"}}]}]}, 400, "text content"),
    ("/v1/chat/completions", {"messages": [{"role": "user", "content": "x"}],
                              "top_logprobs": 2}, 400, "top_logprobs"),
    ("/detokenize", {"tokens": [-1]}, 400, "token ids"),
    ("/tokenize", {}, 400, "exactly one"),
])
def test_bad_requests(server, path, body, status, needle):
    r = post(server, path, body, raw=isinstance(body, str))
    assert r.status_code == status, r.text
    err = r.json()["error"]
    assert needle in err["message"] and err["code"] == status


def test_unknown_route_is_404(server):
    r = httpx.get(server.url + "/v1/nothing")
    assert r.status_code == 404 and "error" in r.json()


def test_tokenize_roundtrip_and_version(server):
    ids = post(server, "/tokenize", {"prompt": "Hello world"}).json()["tokens"]
    assert post(server, "/detokenize", {"tokens": ids}).json()["prompt"] == "Hello world"
    chat = post(server, "/tokenize", {"messages": [{"role": "user", "content": "hi"}]}).json()
    assert chat["count"] == len(chat["tokens"]) > 2
    assert httpx.get(server.url + "/version").json()["version"]


def test_metrics(server):
    post(server, "/v1/completions", {"prompt": "Hello", "max_tokens": 3})
    text = httpx.get(server.url + "/metrics").text
    for name in ("quire:num_requests_running", "quire:num_requests_waiting",
                 "quire:kv_cache_usage_perc", "quire:prefix_cache_queries_total",
                 "quire:prefix_cache_hits_total", "quire:num_preemptions_total",
                 "quire:prompt_tokens_total", "quire:generation_tokens_total",
                 "quire:time_to_first_token_seconds_bucket",
                 "quire:inter_token_latency_seconds_count",
                 "quire:e2e_request_latency_seconds_sum", "quire:request_queue_time_seconds"):
        assert name in text
    assert server.metric("quire:generation_tokens_total") >= 3


def _wait_idle(server, timeout=30.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server.metric("quire:kv_cache_used_blocks") == 0 and \
                server.metric("quire:num_requests_running") == 0:
            return True
        time.sleep(0.1)
    return False


def test_client_disconnect_aborts_and_frees_blocks(server):
    aborted = 'quire:request_success_total{finished_reason="abort"}'
    before_aborts = server.metric(aborted, default=0)
    before_tokens = server.metric("quire:generation_tokens_total", default=0)
    body = {"prompt": "Hello world", "max_tokens": 1000, "ignore_eos": True, "stream": True}
    with httpx.stream("POST", server.url + "/v1/completions", json=body, timeout=30) as r:
        lines = r.iter_lines()
        got = [next(lines) for _ in range(6)]
        assert any(line.startswith("data: ") for line in got)
    # Closed mid-stream: the request is aborted (not run to its 1000 tokens) and its KV
    # blocks come back.
    assert _wait_idle(server, timeout=20)
    assert server.metric(aborted) == before_aborts + 1
    assert server.metric("quire:generation_tokens_total") - before_tokens < 1000


def test_overload_answers_503(llama_dir):
    import concurrent.futures

    srv = Server(llama_dir, "--max-num-seqs", "1", "--max-waiting-requests", "1")
    try:
        body = {"prompt": "Hello", "max_tokens": 300, "ignore_eos": True}
        with concurrent.futures.ThreadPoolExecutor(12) as pool:
            results = list(pool.map(lambda _: post(srv, "/v1/completions", body), range(12)))
        codes = sorted(r.status_code for r in results)
        # One runs, one may wait; the rest are turned away at once with a clear message.
        assert codes.count(503) >= 8 and set(codes) <= {200, 503}, codes
        rejected = next(r for r in results if r.status_code == 503)
        assert "overloaded" in rejected.json()["error"]["message"]
        for r in results:
            if r.status_code == 200:
                assert r.json()["usage"]["completion_tokens"] == 300
        assert _wait_idle(srv)
    finally:
        srv.stop()
