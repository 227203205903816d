"""The server through the official openai client, as users talk to it: one engine, and
two data-parallel replicas behind the server (every test runs against both)."""

from __future__ import annotations

import concurrent.futures

import httpx
import pytest

from quire import LLM, SamplingParams
from tests.server_fixtures import Server


@pytest.fixture(scope="module", params=[1, 2], ids=["dp1", "dp2"])
def server(llama_dir, request):
    srv = Server(llama_dir, "--data-parallel-size", str(request.param))
    yield srv
    srv.stop()


@pytest.fixture(scope="module")
def client(server):
    import openai

    return openai.OpenAI(base_url=server.url + "/v1", api_key="unused", max_retries=0)


def test_models(client):
    (model,) = client.models.list().data
    assert model.id == "tiny"


def test_completion_text_and_usage(client):
    r = client.completions.create(model="tiny", prompt="Hello world", max_tokens=6,
                                  temperature=0, extra_body={"ignore_eos": True})
    assert r.choices[0].finish_reason == "length" and r.usage.completion_tokens == 6
    assert r.usage.prompt_tokens == 3 and r.usage.total_tokens == 9


def test_completion_prompt_forms(client, server):
    r = client.completions.create(model="tiny", prompt=["Hello world", "one two"],
                                  max_tokens=3, temperature=0)
    assert [c.index for c in r.choices] == [0, 1]
    ids = httpx.post(server.url + "/tokenize", json={"prompt": "Hello world"}).json()["tokens"]
    by_ids = client.completions.create(model="tiny", prompt=ids, max_tokens=3, temperature=0)
    assert by_ids.choices[0].text == r.choices[0].text
    two = client.completions.create(model="tiny", prompt=[ids, ids], max_tokens=3,
                                    temperature=0)
    assert len(two.choices) == 2 and two.choices[1].text == r.choices[0].text


def test_greedy_equals_offline_llm(client, llama_dir):
    llm = LLM(llama_dir, dtype="float32", num_blocks=128, block_size=8)
    prompts = ["Hello world", "the scheduler serves", "Paris is"]
    offline = llm.generate(prompts, SamplingParams(temperature=0, max_tokens=10,
                                                   ignore_eos=True), use_tqdm=False)

    def one(prompt):
        stream = client.completions.create(model="tiny", prompt=prompt, max_tokens=10,
                                           temperature=0, stream=True,
                                           extra_body={"ignore_eos": True})
        return "".join(chunk.choices[0].text for chunk in stream if chunk.choices)

    # Many streaming clients at once: all complete, each equal to the offline result.
    with concurrent.futures.ThreadPoolExecutor(12) as pool:
        results = list(pool.map(one, prompts * 4))
    assert results == [o.outputs[0].text for o in offline] * 4


def test_stream_with_usage(client):
    chunks = list(client.completions.create(
        model="tiny", prompt="Hello", max_tokens=5, temperature=0, stream=True,
        stream_options={"include_usage": True}, extra_body={"ignore_eos": True}))
    assert chunks[-1].usage.completion_tokens == 5 and chunks[-1].choices == []
    assert chunks[-2].choices[0].finish_reason == "length"


def test_n_and_seed(client):
    kw = dict(model="tiny", prompt="the cache", max_tokens=8, temperature=1.0, n=3, seed=7)
    a = client.completions.create(**kw)
    b = client.completions.create(**kw)
    assert [c.index for c in a.choices] == [0, 1, 2]
    assert [c.text for c in a.choices] == [c.text for c in b.choices]
    assert len({c.text for c in a.choices}) > 1


def test_stop_string(client):
    free = client.completions.create(model="tiny", prompt="Hello world", max_tokens=12,
                                     temperature=0, extra_body={"ignore_eos": True})
    text = free.choices[0].text
    stop = text[4:7]
    r = client.completions.create(model="tiny", prompt="Hello world", max_tokens=12,
                                  temperature=0, stop=[stop])
    assert r.choices[0].finish_reason == "stop" and r.choices[0].text == text[: text.index(stop)]
    streamed = "".join(c.choices[0].text for c in client.completions.create(
        model="tiny", prompt="Hello world", max_tokens=12, temperature=0, stop=[stop],
        stream=True))
    assert streamed == r.choices[0].text


def test_logprobs_and_echo(client):
    r = client.completions.create(model="tiny", prompt="Hello world", max_tokens=4,
                                  temperature=0, logprobs=2, extra_body={"ignore_eos": True})
    lp = r.choices[0].logprobs
    assert len(lp.tokens) == 4 and len(lp.top_logprobs[0]) == 2
    assert all(v <= 0 for v in lp.token_logprobs) and "".join(lp.tokens) == r.choices[0].text
    e = client.completions.create(model="tiny", prompt="Hello world", max_tokens=3,
                                  temperature=0, echo=True)
    assert e.choices[0].text.startswith("Hello world")


def test_chat(client):
    r = client.chat.completions.create(
        model="tiny", max_completion_tokens=5, temperature=0, logprobs=True, top_logprobs=2,
        messages=[{"role": "system", "content": "be brief"},
                  {"role": "user", "content": [{"type": "text", "text": "Hello"}]}])
    assert r.choices[0].message.role == "assistant"
    assert len(r.choices[0].logprobs.content) == r.usage.completion_tokens
    chunks = list(client.chat.completions.create(
        model="tiny", max_tokens=5, temperature=0, stream=True,
        stream_options={"include_usage": True},
        messages=[{"role": "system", "content": "be brief"},
                  {"role": "user", "content": "Hello"}]))
    assert chunks[0].choices[0].delta.role == "assistant"
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == r.choices[0].message.content
    finish = [c for c in chunks if c.choices and c.choices[0].finish_reason]
    assert len(finish) == 1 and chunks[-1].usage.completion_tokens == r.usage.completion_tokens


def test_server_logged_no_exception(server, client):
    """After the streams above: the server raised nothing inside the ASGI app."""
    stream = client.completions.create(model="tiny", prompt="x", max_tokens=3, stream=True,
                                       stream_options={"include_usage": True})
    chunks = list(stream)
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens == 3
    assert "Traceback" not in server.output()
