"""What a prompt must satisfy to run on this engine, as immutable facts: safe to read from
any thread (the server checks prompts on its event loop, away from the engine thread)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from quire.core.kv_groups import window_pages
from quire.core.sizing import cdiv


@dataclass(frozen=True, slots=True, kw_only=True)
class PromptLimits:
    vocab_size: int
    max_model_len: int
    max_num_batched_tokens: int
    enable_chunked_prefill: bool
    block_size: int
    num_usable_blocks: int
    # A hybrid KV cache (quire.core.kv_groups): its full-attention groups, each holding
    # every block, and the windows of its windowed groups, sharing the usable blocks.
    full_groups: int = 1
    windows: tuple[int, ...] = ()

    def check_token_ids(self, token_ids: Sequence[int], what: str = "prompt") -> None:
        """ValueError unless every id is in [0, vocab_size)."""
        ids = np.asarray(token_ids, dtype=np.int64) if len(token_ids) else np.zeros(0, np.int64)
        bad = ids[(ids < 0) | (ids >= self.vocab_size)]
        if bad.size:
            raise ValueError(f"{what} token ids must be in [0, {self.vocab_size}); got "
                             f"{bad[:5].tolist()}")

    def why_not_fit(self, num_prompt_tokens: int, max_tokens: int | None = None) -> str | None:
        """Why a prompt of this length (plus max_tokens, when given) can never run here, or
        None when it can."""
        if num_prompt_tokens >= self.max_model_len:
            return (f"prompt has {num_prompt_tokens} tokens but the model allows at most "
                    f"{self.max_model_len - 1} (max_model_len={self.max_model_len} includes at "
                    "least one generated token); shorten the prompt")
        if not self.enable_chunked_prefill and num_prompt_tokens > self.max_num_batched_tokens:
            return (f"prompt has {num_prompt_tokens} tokens, more than max_num_batched_tokens="
                    f"{self.max_num_batched_tokens}, and chunked prefill is off; enable chunked "
                    "prefill or raise max_num_batched_tokens")
        needed = self.full_groups * cdiv(num_prompt_tokens + 1, self.block_size)
        if self.windows:  # the largest prefill step's window pages
            step = num_prompt_tokens + 1
            if self.enable_chunked_prefill:
                step = min(step, self.max_num_batched_tokens)
            needed += window_pages(self.windows, self.block_size, step)
        if needed > self.num_usable_blocks:
            return (f"prompt needs {needed} KV blocks but the cache holds only "
                    f"{self.num_usable_blocks}; give the KV cache more memory")
        if max_tokens is not None and num_prompt_tokens + max_tokens > self.max_model_len:
            return (f"This model's maximum context length is {self.max_model_len} tokens; "
                    f"the prompt has {num_prompt_tokens} and max_tokens asks for {max_tokens}. "
                    "Shorten the prompt or lower max_tokens.")
        return None
