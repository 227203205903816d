"""SpeculativeConfig: what a user writes as --speculative-config / LLM(speculative_config=...),
in vLLM's keys, validated on construction."""

from __future__ import annotations

import json
from dataclasses import dataclass, fields
from typing import Any

METHODS = ("ngram", "draft_model")


@dataclass(frozen=True, slots=True, kw_only=True)
class SpeculativeConfig:
    """method: "ngram" (prompt lookup: copy what followed the last occurrence of the
        context's tail) or "draft_model" (a smaller model with the same tokenizer, `model`).
    num_speculative_tokens: draft tokens proposed per request and step (k).
    prompt_lookup_min / prompt_lookup_max: n-gram sizes tried, longest first (ngram).
    model: the draft model's folder or .gguf file (draft_model).
    adaptive: back off per request when its drafts are mostly rejected, and stop drafting in
        steps where verification would cost more than it saves (many running requests).
    disable_by_batch_size: no drafts in a step with at least this many running requests
        (None: the adaptive rule decides).
    """

    method: str
    num_speculative_tokens: int
    prompt_lookup_min: int = 1
    prompt_lookup_max: int = 5
    model: str | None = None
    adaptive: bool = True
    disable_by_batch_size: int | None = None

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise ValueError(f"speculative method must be one of {METHODS}, "
                             f"got {self.method!r}")
        _positive("num_speculative_tokens", self.num_speculative_tokens)
        _positive("prompt_lookup_min", self.prompt_lookup_min)
        _positive("prompt_lookup_max", self.prompt_lookup_max)
        if self.prompt_lookup_min > self.prompt_lookup_max:
            raise ValueError(f"prompt_lookup_min ({self.prompt_lookup_min}) is larger than "
                             f"prompt_lookup_max ({self.prompt_lookup_max})")
        if self.method == "draft_model" and not self.model:
            raise ValueError('speculative method "draft_model" needs "model": the path of a '
                             "smaller model with the same tokenizer")
        if self.method == "ngram" and self.model:
            raise ValueError('"model" is only read by method "draft_model"; drop it or set '
                             '"method": "draft_model"')
        if self.disable_by_batch_size is not None:
            _positive("disable_by_batch_size", self.disable_by_batch_size)

    @classmethod
    def parse(cls, value: SpeculativeConfig | dict[str, Any] | str | None
              ) -> SpeculativeConfig | None:
        """From a dict or its JSON text (vLLM's form); None stays None."""
        if value is None or isinstance(value, SpeculativeConfig):
            return value
        if isinstance(value, str):
            try:
                value = json.loads(value)
            except json.JSONDecodeError as e:
                raise ValueError(f"speculative config is not valid JSON: {e}") from None
        if not isinstance(value, dict):
            raise ValueError("speculative config must be a JSON object such as "
                             '{"method": "ngram", "num_speculative_tokens": 4}')
        names = {f.name for f in fields(cls)}
        unknown = sorted(set(value) - names)
        if unknown:
            raise ValueError(f"unknown speculative config key(s) {unknown}; valid keys: "
                             f"{', '.join(sorted(names))}")
        if "method" not in value:
            # vLLM infers the method: a model means a draft model, else n-gram lookup.
            value = {**value, "method": "draft_model" if value.get("model") else "ngram"}
        if "num_speculative_tokens" not in value:
            raise ValueError('speculative config needs "num_speculative_tokens" (e.g. 4)')
        return cls(**value)


def _positive(name: str, value: object) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
        raise ValueError(f"speculative config: {name} must be a positive integer, "
                         f"got {value!r}")
