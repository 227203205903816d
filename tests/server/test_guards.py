"""The server's guards: API key, body-size cap, long prompts rejected without stalling,
validation errors before any stream starts."""

from __future__ import annotations

import json
import threading
import time

import httpx
import pytest

from tests.server_fixtures import Server


@pytest.fixture(scope="module")
def guarded(llama_dir):
    srv = Server(llama_dir, "--api-key", "s3cret", "--max-request-bytes", "6000000")
    yield srv
    srv.stop()


def test_api_key_with_the_official_client(guarded):
    import openai

    bad = openai.OpenAI(base_url=guarded.url + "/v1", api_key="wrong", max_retries=0)
    with pytest.raises(openai.AuthenticationError) as err:
        bad.completions.create(model="tiny", prompt="hello", max_tokens=2)
    assert err.value.status_code == 401 and "API key" in str(err.value)
    good = openai.OpenAI(base_url=guarded.url + "/v1", api_key="s3cret", max_retries=0)
    out = good.completions.create(model="tiny", prompt="hello", max_tokens=2)
    assert out.usage.completion_tokens == 2
    assert [m.id for m in good.models.list().data] == ["tiny"]
    # Probes and scrapers stay open; a missing header is a 401 with an OpenAI error body.
    assert httpx.get(guarded.url + "/health").status_code == 200
    assert httpx.get(guarded.url + "/metrics").status_code == 200
    r = httpx.get(guarded.url + "/v1/models")
    assert r.status_code == 401 and r.json()["error"]["type"] == "authentication_error"


def _post(srv, path, body, **kw):
    return httpx.post(srv.url + path, content=body if isinstance(body, bytes) else
                      json.dumps(body), timeout=60,
                      headers={"content-type": "application/json",
                               "authorization": "Bearer s3cret"}, **kw)


def test_body_over_the_cap_is_413(guarded):
    r = _post(guarded, "/v1/completions", {"prompt": "x" * 6_100_000})
    assert r.status_code == 413
    assert "--max-request-bytes" in r.json()["error"]["message"]

    def chunks():  # no Content-Length: the cap applies while the body streams in
        body = json.dumps({"prompt": "y" * 6_100_000}).encode()
        for i in range(0, len(body), 1 << 20):
            yield body[i : i + (1 << 20)]

    r = httpx.post(
        guarded.url + "/v1/completions", content=chunks(), timeout=60,
        headers={"content-type": "application/json", "authorization": "Bearer s3cret"})
    assert r.status_code == 413


def test_huge_prompt_is_rejected_fast_and_never_stalls_health(guarded):
    result = {}

    def send():
        t0 = time.monotonic()
        result["response"] = _post(guarded, "/v1/completions", {"prompt": "word " * 1_000_000})
        result["seconds"] = time.monotonic() - t0

    sender = threading.Thread(target=send)
    sender.start()
    worst = 0.0
    while sender.is_alive():
        t0 = time.monotonic()
        assert httpx.get(guarded.url + "/health", timeout=10).status_code == 200
        worst = max(worst, time.monotonic() - t0)
        time.sleep(0.05)
    sender.join()
    assert result["response"].status_code == 400
    assert "maximum context" in result["response"].json()["error"]["message"]
    assert worst < 1.0, f"/health took {worst:.2f}s while a 5 MB prompt was handled"


@pytest.mark.parametrize("path,body", [
    ("/v1/completions", {"prompt": "", "stream": True}),
    ("/v1/completions", {"prompt": [[1, 2], []], "stream": True}),
    ("/v1/chat/completions", {"messages": [{"role": "user", "content": "hi"}],
                              "stream": True, "max_tokens": 100000}),
])
def test_validation_errors_come_before_the_stream(guarded, path, body):
    r = _post(guarded, path, body)
    assert r.status_code == 400, r.text
    assert r.headers["content-type"].startswith("application/json")
    assert r.json()["error"]["type"] == "invalid_request_error"
