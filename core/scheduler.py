"""Token-budget continuous batching with chunked prefill and preemption by recompute.

There are no prefill and decode phases: every request owns num_computed_tokens and is given
tokens until it catches up with num_tokens (prompt + output). Each step serves running
requests first, in admission order, then admits waiting ones while budget and blocks last.
"""

from __future__ import annotations

import logging
import time
from collections import deque
from dataclasses import dataclass, field

from quire.core.config import SchedulerConfig
from quire.core.kv_cache_manager import KVCacheManager
from quire.core.kv_groups import HybridKVCacheManager
from quire.core.request import Request, RequestStatus

logger = logging.getLogger(__name__)


@dataclass(slots=True)
class SchedulerOutput:
    """One step's plan. requests[i] runs num_new_tokens[i] tokens from its
    num_computed_tokens (already advanced past prefix-cache hits); the last
    len(draft_token_ids[i]) of them are draft tokens to verify (speculative decoding)."""

    requests: list[Request] = field(default_factory=list)
    num_new_tokens: list[int] = field(default_factory=list)
    draft_token_ids: list[list[int]] = field(default_factory=list)
    preempted_ids: list[str] = field(default_factory=list)

    @property
    def num_scheduled_tokens(self) -> int:
        return sum(self.num_new_tokens)

    @property
    def is_empty(self) -> bool:
        return not self.requests


class Scheduler:
    def __init__(self, config: SchedulerConfig, kv_cache: KVCacheManager | HybridKVCacheManager
                 ) -> None:
        self.config = config
        self.kv_cache = kv_cache
        self.waiting: deque[Request] = deque()
        self.running: list[Request] = []
        self.requests: dict[str, Request] = {}
        self.num_preemptions = 0
        # Ids finished since the owner last drained this (it drops per-request state).
        self.finished_ids: list[str] = []

    # -- queue management ------------------------------------------------------------------
    def add_request(self, request: Request) -> None:
        if request.request_id in self.requests:
            raise ValueError(f"request id {request.request_id!r} is already in use")
        self.requests[request.request_id] = request
        self.waiting.append(request)

    def finish_requests(self, request_ids: list[str], status: RequestStatus) -> list[Request]:
        """Finish (abort, stop-string hit, ...) requests wherever they are; frees their blocks."""
        done = []
        for request_id in request_ids:
            request = self.requests.get(request_id)
            if request is None or request.is_finished:
                continue
            if request.status == RequestStatus.RUNNING:
                self.running.remove(request)
            else:
                self.waiting.remove(request)
            self._finish(request, status)
            done.append(request)
        return done

    def has_unfinished_requests(self) -> bool:
        return bool(self.waiting or self.running)

    @property
    def num_waiting(self) -> int:
        return len(self.waiting)

    @property
    def num_running(self) -> int:
        return len(self.running)

    # -- the step --------------------------------------------------------------------------
    def schedule(self) -> SchedulerOutput:
        out = SchedulerOutput()
        budget = self.config.max_num_batched_tokens
        now = time.monotonic()
        preempted = False
        i = 0
        while i < len(self.running) and budget > 0:
            request = self.running[i]
            remaining = request.num_tokens - request.num_computed_tokens
            num_new = min(remaining, budget)
            if num_new <= 0:
                i += 1
                continue
            # Drafts only follow a request's last known token, as far as the budget reaches.
            drafts = request.spec_token_ids[: budget - 1] if remaining == 1 else []
            num_new += len(drafts)
            while self.kv_cache.allocate_slots(request, num_new) is None:
                if drafts:  # fewer drafts before preempting anyone for them
                    drafts = drafts[:-1]
                    num_new -= 1
                    continue
                victim = self.running.pop()
                self._preempt(victim)
                out.preempted_ids.append(victim.request_id)
                preempted = True
                if victim is request:
                    break
            else:
                request.spec_token_ids = drafts
                out.requests.append(request)
                out.num_new_tokens.append(num_new)
                out.draft_token_ids.append(drafts)
                budget -= num_new
                i += 1
                continue
            break  # the request preempted itself: nobody after it is left to serve
        if not preempted:
            budget = self._admit_waiting(out, budget, now)
        return out

    def _admit_waiting(self, out: SchedulerOutput, budget: int, now: float) -> int:
        while self.waiting and budget > 0 and len(self.running) < self.config.max_num_seqs:
            request = self.waiting[0]
            hits, num_hit_tokens = self.kv_cache.get_computed_blocks(request)
            num_new = request.num_tokens - num_hit_tokens
            if num_new > budget:
                if not self.config.enable_chunked_prefill:
                    break
                num_new = budget
            if self.kv_cache.allocate_slots(request, num_new, hits) is None:
                break
            self.waiting.popleft()
            request.num_computed_tokens = num_hit_tokens
            if request.num_cached_tokens < 0:
                request.num_cached_tokens = num_hit_tokens
            if request.first_scheduled_time is None:
                request.first_scheduled_time = now
            request.status = RequestStatus.RUNNING
            self.running.append(request)
            request.spec_token_ids = []
            out.requests.append(request)
            out.num_new_tokens.append(num_new)
            out.draft_token_ids.append([])
            budget -= num_new
        return budget

    def _preempt(self, request: Request) -> None:
        self.kv_cache.free(request)
        request.status = RequestStatus.PREEMPTED
        request.num_computed_tokens = 0
        request.spec_token_ids = []
        request.num_preemptions += 1
        self.num_preemptions += 1
        self.waiting.appendleft(request)
        logger.debug("preempted %s (recompute)", request.request_id)

    # -- after the forward pass ------------------------------------------------------------
    def update_from_output(
        self, out: SchedulerOutput, new_token_ids: list[list[int]]
    ) -> tuple[list[Request], list[int], list[Request]]:
        """Advance computed tokens, append new tokens and apply stop rules.

        new_token_ids holds, for each request whose tokens are all computed after this step
        (in schedule order), its new tokens: the accepted drafts and one sampled token.
        Rejected drafts roll num_computed_tokens back. Returns (requests given tokens, how
        many each got, finished requests)."""
        updated, counts, finished = [], [], []
        now = time.monotonic()
        k = 0
        for request, num_new, drafts in zip(out.requests, out.num_new_tokens,
                                            out.draft_token_ids):
            request.num_computed_tokens += num_new
            if request.num_computed_tokens < request.num_tokens + len(drafts):
                continue
            tokens = new_token_ids[k]
            k += 1
            # Positions past the accepted drafts hold rejected K/V: recompute them later.
            request.num_computed_tokens -= len(drafts) - (len(tokens) - 1)
            request.spec_token_ids = []
            if request.first_token_time is None:
                request.first_token_time = now
            status = None
            count = 0
            for token_id in tokens:
                request.append_token(token_id)
                count += 1
                status = self._check_stop(request, token_id)
                if status is not None:
                    break
            updated.append(request)
            counts.append(count)
            if status is not None:
                self.running.remove(request)
                self._finish(request, status)
                finished.append(request)
        assert k == len(new_token_ids), (k, len(new_token_ids))
        return updated, counts, finished

    def _check_stop(self, request: Request, token_id: int) -> RequestStatus | None:
        params = request.sampling_params
        if request.num_output_tokens >= params.min_tokens:
            if not params.ignore_eos and token_id == request.eos_token_id:
                return RequestStatus.FINISHED_STOPPED
            if token_id in params.stop_token_ids:
                request.stop_reason = token_id
                return RequestStatus.FINISHED_STOPPED
        if request.num_output_tokens >= request.max_tokens:
            return RequestStatus.FINISHED_LENGTH
        if request.num_tokens >= self.config.max_model_len:
            return RequestStatus.FINISHED_LENGTH
        return None

    def _finish(self, request: Request, status: RequestStatus) -> None:
        request.status = status
        request.finished_time = time.monotonic()
        self.kv_cache.free(request)
        del self.requests[request.request_id]
        self.finished_ids.append(request.request_id)
