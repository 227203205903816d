"""Structured outputs in the core: per-request grammar state and one packed token bitmask
per step. The grammar engine itself (llguidance, ...) sits behind GrammarBackend, built
outside the core; compilation runs on a worker thread, cached by specification, so a
request waits for its grammar without stalling the batch.

Bitmask layout: [S, W] int32 with W = cdiv(V, 32); bit (t % 32) of word t // 32 in row r
set means token t is allowed for sampled row r.
"""

from __future__ import annotations

import concurrent.futures
import logging
import threading
import time
from abc import ABC, abstractmethod
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

from quire.core.parallel_sampling import ParentRequest
from quire.core.request import Request, RequestStatus
from quire.core.sampling_params import StructuredOutputsParams
from quire.core.sizing import cdiv

logger = logging.getLogger(__name__)

CACHE_SIZE = 512  # compiled grammars kept


class GrammarMatcher(Protocol):
    """One request's position in its grammar."""

    def consume(self, token_id: int) -> bool:
        """Advance by one sampled token; False if the grammar does not allow it."""

    def is_terminated(self) -> bool:
        """The grammar is complete and allows nothing more (the request should stop)."""

    def validate(self, token_ids: Sequence[int]) -> int:
        """How many leading tokens of token_ids the grammar accepts, in order (the matcher
        does not move)."""

    def rollback(self, num_tokens: int) -> None:
        """Undo the last num_tokens consumed tokens."""


class GrammarBackend(ABC):
    """A grammar engine. compile() may run on any thread; the rest on the engine's."""

    @abstractmethod
    def compile(self, spec: StructuredOutputsParams) -> Any:
        """A compiled grammar for spec; ValueError (saying what is wrong) if it is invalid."""

    @abstractmethod
    def matcher(self, compiled: Any) -> GrammarMatcher:
        """A fresh matcher at the start of a compiled grammar."""

    @abstractmethod
    def fill_bitmask(self, matchers: Sequence[tuple[GrammarMatcher, int]],
                     bitmask: np.ndarray) -> None:
        """Write each matcher's allowed tokens into row index of bitmask [S, W] int32."""


@dataclass(slots=True)
class GrammarState:
    """A request's constraint: its compilation (shared, cached) and, once compiled, its own
    matcher."""

    compiled: concurrent.futures.Future
    matcher: GrammarMatcher | None = None
    error: str | None = None


class StructuredOutputManager:
    """Compiles constraints off the hot path and builds each step's bitmask."""

    def __init__(self, backend_factory: Callable[[], GrammarBackend], vocab_size: int,
                 eos_token_id: int | None) -> None:
        self._factory = backend_factory
        self._backend: GrammarBackend | None = None
        self._lock = threading.Lock()
        # Compiled grammars by specification, least recently used first; bounded, so a
        # server fed endless distinct schemas does not grow without limit.
        self._cache: OrderedDict[tuple[str, str], concurrent.futures.Future] = OrderedDict()
        self._pool: concurrent.futures.ThreadPoolExecutor | None = None
        self.vocab_size = vocab_size
        self.eos_token_id = eos_token_id
        self.num_words = cdiv(vocab_size, 32)

    def backend(self) -> GrammarBackend:
        """The grammar engine, built on first use (a tokenizer conversion, ~1 s)."""
        with self._lock:
            if self._backend is None:
                self._backend = self._factory()
            return self._backend

    def submit(self, spec: StructuredOutputsParams) -> concurrent.futures.Future:
        """The compilation of spec: cached, started on the worker thread if new."""
        with self._lock:
            future = self._cache.get(spec.key)
            if future is None:
                if self._pool is None:
                    self._pool = concurrent.futures.ThreadPoolExecutor(1, "quire-grammar")
                future = self._pool.submit(lambda: self.backend().compile(spec))
                self._cache[spec.key] = future
                while len(self._cache) > CACHE_SIZE:
                    self._cache.popitem(last=False)  # requests hold their own future
            else:
                self._cache.move_to_end(spec.key)
            return future

    def validate(self, spec: StructuredOutputsParams) -> None:
        """Compile now (any thread) and raise ValueError if spec is invalid; the result is
        cached for the request that follows."""
        self.submit(spec).result()

    def new_state(self, spec: StructuredOutputsParams) -> GrammarState:
        return GrammarState(self.submit(spec))

    def start(self, state: GrammarState) -> bool:
        """Once compiled: give the request its matcher. False (state.error set) when the
        constraint failed to compile."""
        try:
            state.matcher = self.backend().matcher(state.compiled.result())
        except ValueError as exc:
            state.error = f"invalid structured output constraint: {exc}"
            return False
        return True

    def admit(self, parents: list[ParentRequest], wait: bool
              ) -> tuple[list[ParentRequest], list[ParentRequest], list[ParentRequest]]:
        """Sort parents awaiting their grammar into (ready: each child has its matcher,
        failed: children finished with the compile error, still waiting). wait: nothing
        else can run, so block up to 50 ms for a compilation rather than spin."""
        if wait and parents:
            concurrent.futures.wait([p.children[0].request.grammar.compiled for p in parents],
                                    timeout=0.05, return_when=concurrent.futures.FIRST_COMPLETED)
        ready, failed, waiting = [], [], []
        for parent in parents:
            states = [c.request.grammar for c in parent.children]
            if not states[0].compiled.done():
                waiting.append(parent)
            elif all(self.start(s) for s in states):
                ready.append(parent)
            else:
                parent.error = next(s.error for s in states if s.error)
                for child in parent.children:
                    child.request.status = RequestStatus.FINISHED_ERROR
                    child.request.finished_time = time.monotonic()
                failed.append(parent)
        return ready, failed, waiting

    def trim_drafts(self, requests: Sequence[Request]) -> None:
        """Cut each constrained request's draft tokens before the first its grammar rejects
        (speculative decoding)."""
        for r in requests:
            state = r.grammar
            if r.spec_token_ids and state is not None and state.matcher is not None:
                del r.spec_token_ids[state.matcher.validate(r.spec_token_ids):]

    def step_bitmask(self, requests: Sequence[Request], sampled_req_indices: np.ndarray,
                     row_start: np.ndarray, drafts: Sequence[Sequence[int]]
                     ) -> tuple[np.ndarray | None, list[Request]]:
        """The bitmask of a step's logits rows, None when no sampled request is
        constrained; and the requests allowed no token. Sampled request i
        (requests[sampled_req_indices[i]]) owns rows row_start[i]:row_start[i + 1], one per
        draft drafts[i][j] and a last one: row j masks what may follow its j first drafts
        (the matcher steps through the drafts and is rolled back)."""
        if not any(r.grammar is not None for r in requests):
            return None, []
        sampled = [requests[i] for i in sampled_req_indices.tolist()]
        if not any(r.grammar is not None for r in sampled):
            return None, []
        first_rows = row_start[:-1]
        states: list[GrammarState | None] = [None] * int(row_start[-1])
        for r, row in zip(sampled, first_rows.tolist()):
            states[row] = r.grammar
        mask, dead_rows = self.bitmask(states)
        dead = {int(np.searchsorted(row_start, row, side="right")) - 1 for row in dead_rows}
        # Draft positions: advance every drafting matcher by one draft, fill, repeat.
        drafting = [(r.grammar.matcher, row, list(d)) for r, row, d in zip(sampled,
                                                                          first_rows.tolist(),
                                                                          drafts)
                    if d and r.grammar is not None and r.grammar.matcher is not None]
        depth = 0
        while drafting:
            depth += 1
            rows = []
            for matcher, row, d in drafting:
                matcher.consume(d[depth - 1])
                rows.append((matcher, row + depth))
            self._fill(rows, mask)
            for matcher, _, d in drafting:
                if len(d) == depth:
                    matcher.rollback(depth)
            drafting = [x for x in drafting if len(x[2]) > depth]
        return mask, [sampled[i] for i in sorted(dead)]

    def advance(self, updated: Sequence[Request], counts: Sequence[int],
                dead: Sequence[Request]) -> tuple[list[str], list[str]]:
        """Feed each constrained request its new tokens (counts[i] of them). Returns the ids
        to finish as complete (grammar done: stop; tokens after the end are dropped) and as
        violated (error, reason on the request)."""
        complete, violated = [], []
        dead_ids = {r.request_id for r in dead}
        for request, count in zip(updated, counts):
            state = request.grammar
            # (A request a stop token just finished still gets its tokens checked: a token
            # after the grammar's end, such as that stop token in a run, is dropped.)
            if state is None or state.matcher is None or request.request_id in dead_ids:
                continue
            new = request.output_token_ids[-count:]
            for i, token_id in enumerate(new):
                if not state.matcher.consume(token_id):
                    if not request.is_finished:
                        request.error = "the sampled token violates the output constraint"
                        violated.append(request.request_id)
                    break
                if state.matcher.is_terminated():
                    request.discard_last_tokens(count - 1 - i)
                    complete.append(request.request_id)
                    break
        for request in dead:
            request.error = ("no token can continue the output under its constraint (the "
                             "grammar cannot be satisfied with this vocabulary)")
            if request.is_finished:
                request.status = RequestStatus.FINISHED_ERROR
            else:
                violated.append(request.request_id)
        return complete, violated

    def bitmask(self, states: Sequence[GrammarState | None]) -> tuple[np.ndarray, list[int]]:
        """The step's bitmask for the sampled rows (None: unconstrained, all allowed), and
        the rows where the constraint allows no token at all (those may only end: EOS)."""
        mask = np.full((len(states), self.num_words), -1, dtype=np.int32)
        rows = [(s.matcher, i) for i, s in enumerate(states)
                if s is not None and s.matcher is not None]
        return mask, self._fill(rows, mask)

    def _fill(self, rows: list[tuple[GrammarMatcher, int]], mask: np.ndarray) -> list[int]:
        """Fill the given rows. Returns the rows that allow no token at all; those are set
        to allow EOS only (such a request may only end)."""
        if not rows:
            return []
        self.backend().fill_bitmask(rows, mask)
        filled = np.array([i for _, i in rows], dtype=np.int64)
        dead = filled[~mask[filled].any(axis=1)].tolist()
        for row in dead:
            mask[row] = 0
            if self.eos_token_id is not None:
                mask[row, self.eos_token_id // 32] = np.int32(
                    np.uint32(1 << (self.eos_token_id % 32)).view(np.int32))
        return dead

    def shutdown(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)
