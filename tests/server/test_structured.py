"""Structured outputs over HTTP: OpenAI's response_format (and the official client's
.parse()), vLLM's structured_outputs, streaming, and 400s for bad constraints."""

from __future__ import annotations

import json

import httpx
import pytest

from quire.testing.structured_cases import PERSON


def test_openai_client_parse_returns_the_object(client):
    from pydantic import BaseModel, Field

    class Point(BaseModel):
        x: int = Field(ge=0, le=99)
        y: int = Field(ge=0, le=99)
        label: str = Field(max_length=6)

    done = client.beta.chat.completions.parse(
        model="tiny", messages=[{"role": "user", "content": "a point"}], response_format=Point,
        max_tokens=200, temperature=0)
    parsed = done.choices[0].message.parsed
    assert isinstance(parsed, Point) and 0 <= parsed.x <= 99


def test_json_schema_in_completions_and_streamed_chat(client):
    import jsonschema

    out = client.completions.create(
        model="tiny", prompt="someone", max_tokens=400, temperature=1.0, seed=4,
        extra_body={"structured_outputs": {"json": PERSON}})
    jsonschema.validate(json.loads(out.choices[0].text), PERSON)
    stream = client.chat.completions.create(
        model="tiny", messages=[{"role": "user", "content": "someone"}], max_tokens=400,
        stream=True, response_format={"type": "json_schema", "json_schema": {
            "name": "person", "schema": PERSON}})
    text = "".join(chunk.choices[0].delta.content or "" for chunk in stream if chunk.choices)
    jsonschema.validate(json.loads(text), PERSON)


def test_choice_and_regex(client):
    out = client.completions.create(model="tiny", prompt="mood:", max_tokens=20, n=3,
                                    temperature=1.0,
                                    extra_body={"structured_outputs": {"choice": ["up", "down"]}})
    assert {c.text for c in out.choices} <= {"up", "down"}
    regex = {"structured_outputs": {"regex": "[A-F]{4}-[0-9]{2}"}}
    out = client.completions.create(model="tiny", prompt="id:", max_tokens=30,
                                    extra_body=regex)
    assert len(out.choices[0].text) == 7 and out.choices[0].text[4] == "-"


@pytest.mark.parametrize("body,needle", [
    ({"structured_outputs": {"json": {"type": "object", "properties": {"a": {"type": "bad"}}}}},
     "invalid structured output constraint"),
    ({"structured_outputs": {"regex": "(unclosed"}}, "invalid structured output constraint"),
    ({"structured_outputs": {"regex": "a", "choice": ["b"]}}, "exactly one"),
    ({"structured_outputs": {"nonsense": 1}}, "nonsense"),
    ({"response_format": {"type": "json_schema"}}, "json_schema.schema"),
    ({"response_format": {"type": "json_object"}, "structured_outputs": {"regex": "a"}},
     "not both"),
])
@pytest.mark.parametrize("stream", [False, True])
def test_bad_constraints_are_400_before_any_stream(server, body, needle, stream):
    r = httpx.post(server.url + "/v1/completions", timeout=30, json={
        "prompt": "x", "max_tokens": 4, "stream": stream, **body})
    assert r.status_code == 400, r.text
    assert needle in r.json()["error"]["message"]
