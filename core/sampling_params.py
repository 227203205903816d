"""SamplingParams: how one request's tokens are chosen and when it stops."""

from __future__ import annotations

import json as _json
from dataclasses import dataclass, field

_EPS = 1e-5


@dataclass(frozen=True, slots=True, kw_only=True)
class StructuredOutputsParams:
    """A constraint on the output (vLLM's names); exactly one field is set.

    json: a JSON schema (dict or its JSON text); json_object: any JSON object;
    regex: a regular expression the whole output matches; choice: one of these strings;
    grammar: a context-free grammar (Lark / EBNF syntax, as llguidance reads it).
    """

    json: dict | str | None = None
    json_object: bool = False
    regex: str | None = None
    choice: tuple[str, ...] | list[str] | None = None
    grammar: str | None = None

    def __post_init__(self) -> None:
        given = [name for name in ("json", "regex", "choice", "grammar")
                 if getattr(self, name) is not None] + (["json_object"] if self.json_object
                                                        else [])
        if len(given) != 1:
            raise ValueError("structured outputs take exactly one of json, json_object, regex, "
                             f"choice or grammar; got {given or 'none'}")
        if self.choice is not None:
            if not self.choice or not all(isinstance(c, str) and c for c in self.choice):
                raise ValueError("choice must be a non-empty list of non-empty strings")
            object.__setattr__(self, "choice", tuple(self.choice))

    @property
    def key(self) -> tuple[str, str]:
        """(kind, specification text): what a compiled grammar is cached by."""
        if self.json is not None:
            spec = self.json if isinstance(self.json, str) else _json.dumps(self.json,
                                                                            sort_keys=True)
            return "json", spec
        if self.json_object:
            return "json_object", ""
        if self.regex is not None:
            return "regex", self.regex
        if self.choice is not None:
            return "choice", _json.dumps(list(self.choice))
        return "grammar", self.grammar or ""


@dataclass(slots=True)
class SamplingParams:
    """vLLM-compatible sampling parameters; invalid values raise ValueError at construction.

    temperature 0 means greedy. top_k 0 or -1 disables top-k; top_p 1 and min_p 0 disable
    theirs. Penalties follow OpenAI (presence/frequency, over output tokens) and CTRL
    (repetition, over prompt and output tokens). logprobs=k returns the sampled token's
    logprob and the k most likely tokens' at each step.
    """

    n: int = 1
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0
    min_p: float = 0.0
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    repetition_penalty: float = 1.0
    seed: int | None = None
    max_tokens: int | None = 16
    min_tokens: int = 0
    stop: list[str] | str | None = None
    stop_token_ids: list[int] | None = None
    ignore_eos: bool = False
    logprobs: int | None = None
    skip_special_tokens: bool = True
    include_stop_str_in_output: bool = False
    structured_outputs: StructuredOutputsParams | None = None
    stop_strings: tuple[str, ...] = field(init=False, default=())

    def __post_init__(self) -> None:
        if isinstance(self.stop, str):
            self.stop_strings = (self.stop,)
        else:
            self.stop_strings = tuple(self.stop or ())
        if self.top_k == -1:
            self.top_k = 0
        self.stop_token_ids = list(self.stop_token_ids or [])
        self._validate()

    @property
    def is_greedy(self) -> bool:
        return self.temperature < _EPS

    def _validate(self) -> None:
        _int_at_least("n", self.n, 1)
        _number_in("temperature", self.temperature, 0.0, None)
        _number_in("top_p", self.top_p, 0.0, 1.0, open_low=True)
        _int_at_least("top_k", self.top_k, 0, hint=" (0 or -1 disables top-k)")
        _number_in("min_p", self.min_p, 0.0, 1.0)
        _number_in("presence_penalty", self.presence_penalty, -2.0, 2.0)
        _number_in("frequency_penalty", self.frequency_penalty, -2.0, 2.0)
        _number_in("repetition_penalty", self.repetition_penalty, 0.0, None, open_low=True)
        if self.max_tokens is not None:
            _int_at_least("max_tokens", self.max_tokens, 1)
        _int_at_least("min_tokens", self.min_tokens, 0)
        if self.max_tokens is not None and self.min_tokens > self.max_tokens:
            raise ValueError(
                f"min_tokens ({self.min_tokens}) must not exceed max_tokens ({self.max_tokens})"
            )
        if self.logprobs is not None:
            _int_at_least("logprobs", self.logprobs, 0)
        if self.seed is not None and (not isinstance(self.seed, int)
                                      or isinstance(self.seed, bool)):
            raise ValueError(f"seed must be an integer, got {self.seed!r}")
        if any(not isinstance(s, str) or not s for s in self.stop_strings):
            raise ValueError("stop must be a non-empty string or a list of non-empty strings")
        if any(not isinstance(t, int) or t < 0 for t in self.stop_token_ids):
            raise ValueError("stop_token_ids must be a list of non-negative integers")
        if self.n > 1 and self.is_greedy:
            raise ValueError(
                f"n={self.n} with temperature 0 would return {self.n} identical completions; "
                "set temperature > 0 or n=1"
            )


def _int_at_least(name: str, value: object, low: int, hint: str = "") -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < low:
        raise ValueError(f"{name} must be an integer >= {low}{hint}, got {value!r}")


def _number_in(
    name: str,
    value: object,
    low: float,
    high: float | None,
    open_low: bool = False,
) -> None:
    if not isinstance(value, (int, float)) or isinstance(value, bool):
        raise ValueError(f"{name} must be a number, got {value!r}")
    too_low = value <= low if open_low else value < low
    if too_low or (high is not None and value > high):
        bracket = "(" if open_low else "["
        upper = f"{high}]" if high is not None else "inf)"
        raise ValueError(f"{name} must be in {bracket}{low}, {upper}, got {value!r}")
