"""Tool-call parsers: extraction from each format, and their forcing grammars produce
outputs that parse back into valid calls (random-weight model, cpu backend)."""

from __future__ import annotations

import json

import pytest

from quire.server.tool_parsers import PARSERS, get_parser, held_back

WEATHER = {"type": "function", "function": {"name": "get_weather", "parameters": {
    "type": "object", "properties": {"city": {"type": "string", "maxLength": 10},
                                     "days": {"type": "integer", "minimum": 1, "maximum": 7}},
    "required": ["city", "days"], "additionalProperties": False}}}
TIME = {"type": "function", "function": {"name": "get_time", "parameters": {
    "type": "object", "properties": {"zone": {"enum": ["UTC", "CET"]}}, "required": ["zone"],
    "additionalProperties": False}}}


@pytest.mark.parametrize("name,text,content,calls", [
    ("hermes", 'Sure.\n<tool_call>\n{"name": "f", "arguments": {"a": 1}}\n</tool_call>\n'
               '<tool_call>{"name": "g", "arguments": {}}</tool_call>', "Sure.",
     [("f", {"a": 1}), ("g", {})]),
    ("hermes", "no calls here", "no calls here", []),
    ("hermes", "<tool_call>{broken", "<tool_call>{broken", []),
    ("llama3_json", '<|python_tag|>{"name": "f", "parameters": {"x": "y"}}', "",
     [("f", {"x": "y"})]),
    ("llama3_json", '{"name": "f", "parameters": {}}; {"name": "g", "parameters": {"k": 2}}',
     "", [("f", {}), ("g", {"k": 2})]),
    ("llama3_json", "Paris is the capital.", "Paris is the capital.", []),
    ("mistral", 'ok [TOOL_CALLS][{"name": "f", "arguments": {"a": [1]}}]', "ok",
     [("f", {"a": [1]})]),
])
def test_extract(name, text, content, calls):
    got_content, got = get_parser(name).extract(text)
    assert got_content == content
    assert [(c.name, json.loads(c.arguments)) for c in got] == calls
    assert all(c.id.startswith("call_") for c in got)


def test_stream_holds_back_a_possible_marker():
    hermes = get_parser("hermes")
    assert held_back(hermes, "Hello <tool") == len("Hello ")
    assert held_back(hermes, "Hello <tool_call>{") == len("Hello ")
    assert held_back(hermes, "Hello there") == len("Hello there")


def test_unknown_parser():
    with pytest.raises(ValueError, match="hermes"):
        get_parser("nope")


@pytest.fixture(scope="module")
def llm(llama_dir):
    from quire import LLM

    return LLM(llama_dir, backend="cpu", dtype="float32", num_blocks=256)


@pytest.mark.parametrize("name", sorted(set(PARSERS) - {"qwen"}))
def test_forcing_grammar_yields_parseable_calls(llm, name):
    import jsonschema

    from quire import SamplingParams

    parser = get_parser(name)
    params = SamplingParams(temperature=1.0, seed=5, max_tokens=300,
                            structured_outputs=parser.constraint([WEATHER, TIME]))
    for out in llm.generate(["call a tool", "weather?"], params, use_tqdm=False):
        text = out.outputs[0].text
        assert out.outputs[0].finish_reason == "stop", text
        _, calls = parser.extract(text)
        assert calls, text
        for call in calls:
            spec = {"get_weather": WEATHER, "get_time": TIME}[call.name]
            jsonschema.validate(json.loads(call.arguments), spec["function"]["parameters"])
