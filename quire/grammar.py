"""The llguidance grammar engine behind the core's GrammarBackend interface (structured
outputs). llguidance is a Rust library with no framework dependency, so every backend
family, the JAX one included, can use it; the core never imports it."""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from typing import Any

import numpy as np

from quire.core.sampling_params import StructuredOutputsParams
from quire.core.structured_outputs import GrammarBackend, GrammarMatcher

# Compact JSON: no free whitespace between tokens (a weak model would otherwise fill the
# budget with spaces); schemas may still allow it inside strings.
_JSON_OPTIONS = {"whitespace_flexible": False}


class LLGuidanceMatcher:
    def __init__(self, matcher: Any) -> None:
        self.inner = matcher

    def consume(self, token_id: int) -> bool:
        return bool(self.inner.consume_token(token_id))

    def is_terminated(self) -> bool:
        return bool(self.inner.is_stopped())

    def validate(self, token_ids: Sequence[int]) -> int:
        return int(self.inner.validate_tokens(list(token_ids)))

    def rollback(self, num_tokens: int) -> None:
        self.inner.rollback(num_tokens)


class LLGuidanceBackend(GrammarBackend):
    """hf_tokenizer: a transformers fast tokenizer; vocab_size: the model's logits width
    (tokens past the tokenizer's own vocabulary are never allowed)."""

    def __init__(self, hf_tokenizer: Any, vocab_size: int) -> None:
        try:
            import llguidance
            import llguidance.hf
        except ImportError as exc:
            raise ValueError("structured outputs need the `llguidance` package: "
                             "pip install llguidance") from exc
        self._ll = llguidance
        self.tokenizer = llguidance.hf.from_tokenizer(hf_tokenizer, n_vocab=vocab_size)
        self.executor = llguidance.LLExecutor(num_threads=max(1, min(8, os.cpu_count() or 1)))

    def compile(self, spec: StructuredOutputsParams) -> str:
        grammar = self._grammar(spec)
        is_error, messages = self._ll.LLMatcher.validate_grammar_with_warnings(
            grammar, self.tokenizer)
        if is_error:
            raise ValueError(messages[0] if messages else "invalid grammar")
        return grammar

    def _grammar(self, spec: StructuredOutputsParams) -> str:
        kind, text = spec.key
        LLMatcher = self._ll.LLMatcher
        try:
            if kind == "json":
                json.loads(text)  # a clear error for malformed schema text
                return LLMatcher.grammar_from_json_schema(text, defaults=_JSON_OPTIONS)
            if kind == "json_object":
                return LLMatcher.grammar_from_json_schema('{"type": "object"}',
                                                          defaults=_JSON_OPTIONS)
            if kind == "regex":
                return LLMatcher.grammar_from_regex(text)
            if kind == "choice":
                alternatives = " | ".join(json.dumps(c) for c in json.loads(text))
                return LLMatcher.grammar_from_lark(f"start: {alternatives}")
            return self._ll.grammar_from("grammar", text)  # Lark, or GBNF / EBNF
        except (ValueError, TypeError) as exc:
            raise ValueError(f"{kind}: {exc}") from exc

    def matcher(self, compiled: str) -> GrammarMatcher:
        inner = self._ll.LLMatcher(self.tokenizer, compiled, log_level=0)
        if inner.is_error():
            raise ValueError(inner.get_error())
        return LLGuidanceMatcher(inner)

    def fill_bitmask(self, matchers: Sequence[tuple[GrammarMatcher, int]],
                     bitmask: np.ndarray) -> None:
        from llguidance.numpy import fill_next_token_bitmask_par

        pairs = [(m.inner, row) for m, row in matchers]  # type: ignore[attr-defined]
        fill_next_token_bitmask_par(self.executor, pairs, bitmask)
