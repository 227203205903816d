"""Tool calls in model output: one parser per format (--tool-call-parser), each able to
extract calls from finished text, say where calls begin (so a stream holds that text
back), and write the grammar that forces a call (tool_choice "required" or a named one).

Formats:
  hermes (also Qwen 2.5 / 3): <tool_call>{"name": ..., "arguments": {...}}</tool_call>, repeated
  llama3_json: {"name": ..., "parameters": {...}} (after an optional <|python_tag|>),
               several joined by ";"
  mistral: [TOOL_CALLS][{"name": ..., "arguments": {...}}, ...]
"""

from __future__ import annotations

import json
import re
import uuid
from dataclasses import dataclass
from typing import Any

from quire.core.sampling_params import StructuredOutputsParams


@dataclass(slots=True)
class ToolCall:
    name: str
    arguments: str  # JSON text
    id: str = ""

    def __post_init__(self) -> None:
        self.id = self.id or f"call_{uuid.uuid4().hex[:24]}"

    def as_openai(self) -> dict[str, Any]:
        return {"id": self.id, "type": "function",
                "function": {"name": self.name, "arguments": self.arguments}}


# Compact JSON inside forcing grammars: no free whitespace between JSON tokens.
_COMPACT = {"x-guidance": {"whitespace_flexible": False}}


def call_schema(tools: list[dict[str, Any]], args_key: str) -> dict[str, Any]:
    """JSON schema of one call to any of tools: {"name": const, args_key: parameters}."""
    options = []
    for tool in tools:
        fn = tool["function"]
        params = fn.get("parameters") or {"type": "object", "properties": {}}
        options.append({"type": "object", "properties": {
            "name": {"const": fn["name"]}, args_key: params},
            "required": ["name", args_key], "additionalProperties": False})
    return options[0] if len(options) == 1 else {"anyOf": options}


def _decoder_objects(text: str) -> list[tuple[int, int, Any]]:
    """Every top-level JSON value in text: (start, end, value)."""
    found, decoder, i = [], json.JSONDecoder(), 0
    while i < len(text):
        if text[i] in "{[":
            try:
                value, end = decoder.raw_decode(text, i)
            except ValueError:
                i += 1
                continue
            found.append((i, end, value))
            i = end
        else:
            i += 1
    return found


class ToolParser:
    name = ""
    start_marker = ""  # text that opens the tool-call part of an output
    args_key = "arguments"
    keeps_special_tokens = False  # the marker is a special token: keep it in the text

    def extract(self, text: str) -> tuple[str, list[ToolCall]]:
        """(content before the calls, the calls); no calls: (text, [])."""
        raise NotImplementedError

    def call_start(self, text: str) -> int | None:
        """Where the tool calls begin in text, if they do."""
        i = text.find(self.start_marker)
        return None if i < 0 else i

    def constraint(self, tools: list[dict[str, Any]]) -> StructuredOutputsParams:
        """A grammar whose every output is one or more calls to these tools."""
        raise NotImplementedError

    def _calls(self, values: list[Any]) -> list[ToolCall]:
        calls = []
        for v in values:
            if isinstance(v, dict) and isinstance(v.get("name"), str):
                args = v.get(self.args_key, v.get("arguments", {}))
                calls.append(ToolCall(v["name"], json.dumps(args, ensure_ascii=False)))
        return calls


class HermesParser(ToolParser):
    name = "hermes"
    start_marker = "<tool_call>"
    _BLOCK = re.compile(r"<tool_call>\s*(.*?)\s*(?:</tool_call>|$)", re.S)

    def extract(self, text: str) -> tuple[str, list[ToolCall]]:
        start = self.call_start(text)
        if start is None:
            return text, []
        values = []
        for body in self._BLOCK.findall(text[start:]):
            try:
                values.append(json.loads(body))
            except ValueError:
                continue
        calls = self._calls(values)
        return (text[:start].strip(), calls) if calls else (text, [])

    def constraint(self, tools: list[dict[str, Any]]) -> StructuredOutputsParams:
        schema = json.dumps({**call_schema(tools, "arguments"), **_COMPACT})
        return StructuredOutputsParams(grammar=(  # one to three calls
            'start: call | call "\\n" call | call "\\n" call "\\n" call\n'
            'call: "<tool_call>\\n" body "\\n</tool_call>"\n'
            f"body: %json {schema}\n"))


class Llama3JsonParser(ToolParser):
    name = "llama3_json"
    start_marker = "{"
    args_key = "parameters"

    def call_start(self, text: str) -> int | None:
        stripped = text.lstrip()
        offset = len(text) - len(stripped)
        if stripped.startswith("<|python_tag|>"):
            return offset
        return offset if stripped.startswith("{") else None

    def extract(self, text: str) -> tuple[str, list[ToolCall]]:
        start = self.call_start(text)
        if start is None:
            return text, []
        body = text[start:].replace("<|python_tag|>", "", 1)
        calls = self._calls([v for _, _, v in _decoder_objects(body)])
        return ("", calls) if calls else (text, [])

    def constraint(self, tools: list[dict[str, Any]]) -> StructuredOutputsParams:
        return StructuredOutputsParams(json=call_schema(tools, "parameters"))


class MistralParser(ToolParser):
    name = "mistral"
    start_marker = "[TOOL_CALLS]"
    keeps_special_tokens = True

    def extract(self, text: str) -> tuple[str, list[ToolCall]]:
        start = self.call_start(text)
        if start is None:
            return text, []
        body = text[start + len(self.start_marker):]
        values = [v for _, _, v in _decoder_objects(body)]
        flat = [x for v in values for x in (v if isinstance(v, list) else [v])]
        calls = self._calls(flat)
        return (text[:start].strip(), calls) if calls else (text, [])

    def constraint(self, tools: list[dict[str, Any]]) -> StructuredOutputsParams:
        schema = json.dumps({"type": "array", "minItems": 1, "maxItems": 3,
                             "items": call_schema(tools, "arguments"), **_COMPACT})
        return StructuredOutputsParams(
            grammar=f'start: "[TOOL_CALLS]" body\nbody: %json {schema}\n')


def held_back(parser: ToolParser, text: str) -> int:
    """How much of a streamed text may go out as content now: everything before the calls,
    minus a tail that could be the start of the call marker."""
    start = parser.call_start(text)
    if start is not None:
        return start
    marker = parser.start_marker
    for k in range(min(len(marker) - 1, len(text)), 0, -1):
        if text.endswith(marker[:k]):
            return len(text) - k
    return len(text)


PARSERS: dict[str, type[ToolParser]] = {
    "hermes": HermesParser, "qwen": HermesParser, "llama3_json": Llama3JsonParser,
    "mistral": MistralParser,
}


def get_parser(name: str) -> ToolParser:
    if name not in PARSERS:
        raise ValueError(f"unknown tool-call parser {name!r}; choose from {sorted(PARSERS)}")
    return PARSERS[name]()
