"""OpenAI tool calling through the official client: forced calls (required / named),
streamed tool-call deltas, the call -> result -> answer round trip, and 400s."""

from __future__ import annotations

import json

import httpx
import jsonschema
import pytest

from tests.server.test_tool_parsers import TIME, WEATHER

USER = [{"role": "user", "content": "What is the weather in Paris?"}]


def _check(call):
    spec = {"get_weather": WEATHER, "get_time": TIME}[call.function.name]
    jsonschema.validate(json.loads(call.function.arguments), spec["function"]["parameters"])


def test_required_tool_call(client):
    done = client.chat.completions.create(model="tiny", messages=USER, tools=[WEATHER, TIME],
                                          tool_choice="required", max_tokens=300,
                                          temperature=1.0, seed=3)
    choice = done.choices[0]
    assert choice.finish_reason == "tool_calls" and choice.message.tool_calls
    for call in choice.message.tool_calls:
        assert call.id.startswith("call_") and call.type == "function"
        _check(call)


def test_named_tool_choice(client):
    done = client.chat.completions.create(
        model="tiny", messages=USER, tools=[WEATHER, TIME], max_tokens=300,
        tool_choice={"type": "function", "function": {"name": "get_time"}})
    calls = done.choices[0].message.tool_calls
    assert calls and all(c.function.name == "get_time" for c in calls)


def test_streamed_tool_call_round_trip(client):
    stream = client.chat.completions.create(model="tiny", messages=USER, tools=[WEATHER],
                                            tool_choice="required", max_tokens=300,
                                            stream=True)
    calls: dict[int, dict] = {}
    finish = None
    for chunk in stream:
        for choice in chunk.choices:
            for d in choice.delta.tool_calls or []:
                entry = calls.setdefault(d.index, {"id": None, "name": "", "arguments": ""})
                entry["id"] = d.id or entry["id"]
                if d.function is not None:
                    entry["name"] += d.function.name or ""
                    entry["arguments"] += d.function.arguments or ""
            finish = choice.finish_reason or finish
    assert finish == "tool_calls" and calls
    first = calls[0]
    assert first["name"] == "get_weather"
    args = json.loads(first["arguments"])
    jsonschema.validate(args, WEATHER["function"]["parameters"])
    # The round trip: the call and its result go back in; the model answers in text.
    messages = USER + [
        {"role": "assistant", "content": None, "tool_calls": [{
            "id": first["id"], "type": "function",
            "function": {"name": first["name"], "arguments": first["arguments"]}}]},
        {"role": "tool", "tool_call_id": first["id"], "content": "sunny, 21 C"}]
    answer = client.chat.completions.create(model="tiny", messages=messages, tools=[WEATHER],
                                            tool_choice="none", max_tokens=8)
    assert answer.choices[0].message.tool_calls is None
    assert isinstance(answer.choices[0].message.content, str)


def test_auto_without_a_call_is_plain_content(client):
    done = client.chat.completions.create(model="tiny", messages=USER, tools=[WEATHER],
                                          max_tokens=6, temperature=0)
    message = done.choices[0].message
    if message.tool_calls is None:  # a random model rarely writes <tool_call>
        assert isinstance(message.content, str)
        assert done.choices[0].finish_reason in ("stop", "length")


@pytest.mark.parametrize("body,needle", [
    ({"tool_choice": "required"}, "tool_choice needs tools"),
    ({"tools": [WEATHER], "tool_choice": {"type": "function", "function": {"name": "nope"}}},
     "not among the tools"),
    ({"tools": [WEATHER], "tool_choice": "required",
      "response_format": {"type": "json_object"}}, "cannot be combined"),
    ({"tools": [{"type": "function", "function": {"name": ""}}]}, "tools"),
])
def test_bad_tool_requests_are_400(server, body, needle):
    r = httpx.post(server.url + "/v1/chat/completions", timeout=30,
                   json={"messages": USER, "max_tokens": 4, **body})
    assert r.status_code == 400, r.text
    assert needle in r.json()["error"]["message"]
