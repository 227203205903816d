"""A request's lifecycle state, as the scheduler and the KV cache manager see it."""

from __future__ import annotations

import enum
import time
from typing import TYPE_CHECKING

from quire.core.hashing import BlockHash, hash_block_tokens
from quire.core.sampling_params import SamplingParams

if TYPE_CHECKING:
    from quire.core.structured_outputs import GrammarState


class RequestStatus(enum.IntEnum):
    WAITING = 0
    RUNNING = 1
    PREEMPTED = 2
    # Everything from here on is finished.
    FINISHED_STOPPED = 3
    FINISHED_LENGTH = 4
    FINISHED_ABORTED = 5
    FINISHED_ERROR = 6

    @property
    def is_finished(self) -> bool:
        return self >= RequestStatus.FINISHED_STOPPED

    @property
    def finish_reason(self) -> str | None:
        return _FINISH_REASONS.get(self)


_FINISH_REASONS = {
    RequestStatus.FINISHED_STOPPED: "stop",
    RequestStatus.FINISHED_LENGTH: "length",
    RequestStatus.FINISHED_ABORTED: "abort",
    RequestStatus.FINISHED_ERROR: "error",
}


class Request:
    """One sequence being generated. A request with n > 1 becomes n of these.

    Invariant: num_computed_tokens <= num_tokens; tokens [0, num_computed_tokens) have their
    K/V in the request's blocks. block_hashes covers every full block of all_token_ids.
    """

    __slots__ = (
        "request_id", "prompt_token_ids", "sampling_params", "eos_token_id", "arrival_time",
        "status", "all_token_ids", "output_token_ids", "num_computed_tokens", "block_hashes",
        "block_size", "extra_keys", "num_cached_tokens", "num_preemptions", "stop_reason",
        "error", "first_scheduled_time", "first_token_time", "finished_time", "max_tokens",
        "grammar", "spec_token_ids", "spec_acceptance", "spec_cooldown",
    )

    def __init__(
        self,
        *,
        request_id: str,
        prompt_token_ids: list[int],
        sampling_params: SamplingParams,
        eos_token_id: int | None,
        block_size: int,
        max_tokens: int,
        extra_keys: tuple = (),
        arrival_time: float | None = None,
    ) -> None:
        self.request_id = request_id
        self.prompt_token_ids = list(prompt_token_ids)
        self.sampling_params = sampling_params
        self.eos_token_id = eos_token_id
        self.arrival_time = time.monotonic() if arrival_time is None else arrival_time
        self.status = RequestStatus.WAITING
        self.all_token_ids = list(prompt_token_ids)
        self.output_token_ids: list[int] = []
        self.num_computed_tokens = 0
        # Structured outputs: the constraint's state (core/structured_outputs.py), or None.
        self.grammar: GrammarState | None = None
        # Speculative decoding: draft tokens to verify in the next step (not yet part of
        # all_token_ids; the scheduler may trim them to the step's budget).
        self.spec_token_ids: list[int] = []
        # Its drafts' acceptance estimate, and (steps left, next length) of a back-off
        # (core/spec_decode.py; None: not drafted yet / not backing off).
        self.spec_acceptance: float | None = None
        self.spec_cooldown: tuple[int, int] | None = None
        self.block_size = block_size
        self.extra_keys = extra_keys
        self.block_hashes: list[BlockHash] = []
        self.num_cached_tokens = -1  # prefix-cache hit on first scheduling; -1 = not yet
        self.num_preemptions = 0
        self.stop_reason: int | str | None = None
        self.error: str | None = None
        self.first_scheduled_time: float | None = None
        self.first_token_time: float | None = None
        self.finished_time: float | None = None
        self.max_tokens = max_tokens
        self._extend_block_hashes()

    @property
    def num_tokens(self) -> int:
        return len(self.all_token_ids)

    @property
    def num_prompt_tokens(self) -> int:
        return len(self.prompt_token_ids)

    @property
    def num_output_tokens(self) -> int:
        return len(self.output_token_ids)

    @property
    def is_finished(self) -> bool:
        return self.status.is_finished

    def append_token(self, token_id: int) -> None:
        self.all_token_ids.append(token_id)
        self.output_token_ids.append(token_id)
        if len(self.all_token_ids) % self.block_size == 0:
            self._extend_block_hashes()

    def discard_last_tokens(self, n: int) -> None:
        """Drop the last n output tokens (accepted in one step past a stop string)."""
        if n <= 0:
            return
        del self.all_token_ids[-n:]
        del self.output_token_ids[-n:]
        del self.block_hashes[len(self.all_token_ids) // self.block_size :]

    def _extend_block_hashes(self) -> None:
        bs = self.block_size
        start = len(self.block_hashes)
        parent = self.block_hashes[-1] if self.block_hashes else None
        for i in range(start, len(self.all_token_ids) // bs):
            parent = hash_block_tokens(parent, self.all_token_ids[i * bs : (i + 1) * bs],
                                       self.extra_keys)
            self.block_hashes.append(parent)
