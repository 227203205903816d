"""Constraints with a checker each, for structured-output tests on any backend: the output
of a random-weight model must satisfy them, since nothing but the token mask keeps it so.
Each constraint bounds its output's length (a random model never chooses to close an
unbounded string), so every output completes within a few hundred tokens."""

from __future__ import annotations

import json
import re
from collections.abc import Callable

from quire.core.sampling_params import StructuredOutputsParams

PERSON = {
    "type": "object",
    "properties": {
        "name": {"type": "string", "maxLength": 12},
        "age": {"type": "integer", "minimum": 0, "maximum": 130},
        "email": {"type": "string", "pattern": "^[a-z]{1,8}@[a-z]{1,8}\\.(com|org)$"},
        "tags": {"type": "array", "items": {"enum": ["red", "green", "blue"]},
                 "minItems": 1, "maxItems": 3},
        "address": {"type": "object", "properties": {
            "city": {"type": "string", "maxLength": 10},
            "zip": {"type": "string", "pattern": "^[0-9]{5}$"}},
            "required": ["city", "zip"], "additionalProperties": False},
        "score": {"type": "number", "minimum": -1, "maximum": 1},
        "kind": {"anyOf": [{"type": "integer", "minimum": 0, "maximum": 9},
                           {"type": "string", "enum": ["none"]}, {"type": "null"}]},
    },
    "required": ["name", "age", "email", "tags", "address", "score", "kind"],
    "additionalProperties": False,
}
MATRIX = {"type": "array", "minItems": 1, "maxItems": 3,
          "items": {"type": "array", "items": {"type": "boolean"}, "maxItems": 4}}


def _schema_checker(schema: dict) -> Callable[[str], None]:
    def check(text: str) -> None:
        import jsonschema

        jsonschema.validate(json.loads(text), schema)

    return check


def _regex_checker(pattern: str) -> Callable[[str], None]:
    def check(text: str) -> None:
        assert re.fullmatch(pattern, text), (pattern, text)

    return check


CASES: dict[str, tuple[StructuredOutputsParams, Callable[[str], None]]] = {
    "json-person": (StructuredOutputsParams(json=PERSON), _schema_checker(PERSON)),
    "json-matrix": (StructuredOutputsParams(json=MATRIX), _schema_checker(MATRIX)),
    "regex-date": (StructuredOutputsParams(regex=r"20[0-9]{2}-(0[1-9]|1[0-2])-[0-3][0-9]"),
                   _regex_checker(r"20[0-9]{2}-(0[1-9]|1[0-2])-[0-3][0-9]")),
    "choice": (StructuredOutputsParams(choice=["positive", "negative", "not sure"]),
               lambda text: None if text in ("positive", "negative", "not sure")
               else (_ for _ in ()).throw(AssertionError(text))),
    "grammar": (StructuredOutputsParams(grammar='start: "(" sum ")" | "[" sum "]"\n'
                                                'sum: NUM | NUM "+" NUM | NUM "+" NUM "+" NUM\n'
                                                "NUM: /[1-9]/"),
                _regex_checker(r"\([1-9](\+[1-9]){0,2}\)|\[[1-9](\+[1-9]){0,2}\]")),
}
