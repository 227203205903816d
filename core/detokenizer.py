"""Incremental detokenization with stop strings that never leak into streamed text."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

# Tokens of prompt context decoded along with the output, so a first output token that
# starts a word keeps its leading space.
_CONTEXT_TOKENS = 6


class Tokenizer(Protocol):
    eos_token_id: int | None

    def encode(self, text: str) -> list[int]: ...

    def decode(self, token_ids: Sequence[int], skip_special_tokens: bool = True) -> str: ...


class IncrementalDetokenizer:
    """Turns a growing list of output token ids into text, a few tokens at a time.

    The text of ids[prefix_offset:read_offset] was already emitted; decoding
    ids[prefix_offset:] and taking the part beyond it yields the new text. A trailing U+FFFD
    means a multi-byte character is split across tokens: wait for the next token."""

    def __init__(
        self,
        tokenizer: Tokenizer,
        prompt_token_ids: Sequence[int],
        skip_special_tokens: bool = True,
        stop_strings: Sequence[str] = (),
        include_stop_str_in_output: bool = False,
    ) -> None:
        self.tokenizer = tokenizer
        self.skip_special_tokens = skip_special_tokens
        self.ids = list(prompt_token_ids[-_CONTEXT_TOKENS:])
        self.prefix_offset = 0
        self.read_offset = len(self.ids)
        self.output_text = ""
        self.stop_strings = tuple(stop_strings)
        self.include_stop = include_stop_str_in_output
        self.hold_back = max((len(s) for s in self.stop_strings), default=1) - 1
        self.is_done = False

    def update(self, new_token_ids: Sequence[int]) -> str | None:
        """Add tokens; returns the stop string that matched (text then ends there), if any."""
        start = len(self.output_text)
        for token_id in new_token_ids:
            self.ids.append(token_id)
            self.output_text += self._next_text()
        if not self.stop_strings:
            return None
        return self._check_stop(max(0, start - self.hold_back))

    def finish(self) -> None:
        """The request ended: emit bytes still waiting for a character to complete (they
        decode to U+FFFD, as a full decode would show them). Idempotent."""
        if self.is_done:
            return
        self.is_done = True
        prefix, full = self._decode_pending()
        self.output_text += full[len(prefix) :]

    def visible_text(self, finished: bool) -> str:
        """Text safe to show: while running, a possible stop-string prefix is held back."""
        if finished or not self.hold_back:
            return self.output_text
        return self.output_text[: max(0, len(self.output_text) - self.hold_back)]

    def _decode_pending(self) -> tuple[str, str]:
        """(text already emitted from the window, text of the whole window)."""
        decode, skip = self.tokenizer.decode, self.skip_special_tokens
        prefix = decode(self.ids[self.prefix_offset : self.read_offset], skip_special_tokens=skip)
        return prefix, decode(self.ids[self.prefix_offset :], skip_special_tokens=skip)

    def _next_text(self) -> str:
        prefix, full = self._decode_pending()
        if len(full) > len(prefix) and not full.endswith("\ufffd"):
            self.prefix_offset = self.read_offset
            self.read_offset = len(self.ids)
            return full[len(prefix) :]
        return ""

    def _check_stop(self, search_from: int) -> str | None:
        best: tuple[int, str] | None = None
        for stop in self.stop_strings:
            idx = self.output_text.find(stop, search_from)
            if idx != -1 and (best is None or idx < best[0]):
                best = (idx, stop)
        if best is None:
            return None
        idx, stop = best
        self.is_done = True
        self.output_text = self.output_text[: idx + len(stop) if self.include_stop else idx]
        return stop
