"""What the server's handlers talk to: a StreamingEngine takes requests from asyncio
handlers and streams each one's outputs back to them. AsyncEngine: one thread steps a local
LLMEngine (only that thread touches it); data_parallel.DataParallelEngine: replicas in
processes of their own."""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass

from quire.core.engine import LLMEngine
from quire.core.executor import ModelInfo
from quire.core.outputs import RequestOutput
from quire.core.prompt_limits import PromptLimits
from quire.core.sampling_params import SamplingParams
from quire.core.structured_outputs import StructuredOutputManager
from quire.server.metrics import Metrics
from quire.tokenizer import HFTokenizer

logger = logging.getLogger(__name__)


class EngineOverloaded(Exception):
    """More requests are waiting than the server accepts."""


class EngineFailure(RuntimeError):
    """The engine (or a replica, or a tensor-parallel worker) broke: the request cannot
    finish. The server answers 503 and /health says why."""


@dataclass(slots=True)
class _Stream:
    loop: asyncio.AbstractEventLoop
    queue: asyncio.Queue
    last_time: float
    num_tokens: int = 0


class StreamingEngine:
    """The handlers' side of an engine: submit, stream outputs back, abort. Subclasses set
    the immutable facts (model_info, limits, tokenizer, structured) and implement _submit,
    abort, num_waiting and shutdown; they hand outputs to _deliver and errors to _send
    from any thread."""

    model_info: ModelInfo
    limits: PromptLimits
    tokenizer: HFTokenizer  # the engine's; others take a copy
    structured: StructuredOutputManager | None  # thread-safe: compiles and validates

    def __init__(self, max_waiting_requests: int | None) -> None:
        self.max_waiting_requests = max_waiting_requests
        self.metrics = Metrics()
        self.failure: str | None = None  # why the engine cannot serve (health turns 503)
        self._streams: dict[str, _Stream] = {}
        self._lock = threading.Lock()

    # -- called from the event loop --------------------------------------------------------
    def generate(self, request_id: str, prompt_ids: Sequence[int],
                 params: SamplingParams) -> AsyncIterator[RequestOutput]:
        """Submit now (EngineOverloaded if too many wait) and return the request's
        cumulative outputs until it finishes. Leaving the iteration early (a client
        disconnect cancels the handler) aborts the request and frees its KV blocks.
        Call from the event loop."""
        stream = _Stream(asyncio.get_running_loop(), asyncio.Queue(), time.monotonic())
        self._submit(request_id, prompt_ids, params, stream)
        return self._outputs(request_id, stream)

    def _check_overload(self, queued: int) -> None:
        if self.max_waiting_requests is not None and queued >= self.max_waiting_requests:
            raise EngineOverloaded(
                f"server overloaded: {self.max_waiting_requests} requests are already "
                "waiting; retry later")

    def _submit(self, request_id: str, prompt_ids: Sequence[int], params: SamplingParams,
                stream: _Stream) -> None:
        raise NotImplementedError

    def abort(self, request_id: str) -> None:
        raise NotImplementedError

    def num_waiting(self) -> int:
        raise NotImplementedError

    def shutdown(self) -> None:
        raise NotImplementedError

    async def _outputs(self, request_id: str, stream: _Stream) -> AsyncIterator[RequestOutput]:
        finished = False
        try:
            while True:
                item = await stream.queue.get()
                if isinstance(item, Exception):
                    raise item
                finished = item.finished
                yield item
                if finished:
                    return
        finally:
            if not finished:
                self.abort(request_id)

    # -- called from any thread --------------------------------------------------------------
    def _deliver(self, out: RequestOutput) -> None:
        with self._lock:
            stream = self._streams.get(out.request_id)
        if stream is None:
            return
        now = time.monotonic()
        num_tokens = sum(len(c.token_ids) for c in out.outputs)
        if num_tokens > stream.num_tokens:
            if stream.num_tokens:
                gap = (now - stream.last_time) / (num_tokens - stream.num_tokens)
                self.metrics.inter_token_latency.observe(gap)
            stream.num_tokens, stream.last_time = num_tokens, now
        if out.finished:
            self.metrics.observe_finished(out, now)
        self._send(out.request_id, out)

    def _send(self, request_id: str, item: RequestOutput | Exception) -> None:
        with self._lock:
            stream = self._streams.get(request_id)
            if stream is None:
                return
            if isinstance(item, Exception) or item.finished:
                self._streams.pop(request_id, None)
        stream.loop.call_soon_threadsafe(stream.queue.put_nowait, item)


class AsyncEngine(StreamingEngine):
    """One thread steps a local LLMEngine."""

    def __init__(self, engine: LLMEngine, max_waiting_requests: int | None = None) -> None:
        super().__init__(max_waiting_requests)
        self.engine = engine  # touched by the engine thread only, once it has started
        # Immutable facts other threads may read.
        self.model_info = engine.model_info
        self.limits = engine.limits
        self.tokenizer = engine.tokenizer
        self.structured = engine.structured
        self._num_waiting = 0  # published by the engine thread after every step
        self._cv = threading.Condition()
        self._adds: list[tuple[str, Sequence[int], SamplingParams]] = []
        self._aborts: list[str] = []
        self._stopped = False
        self._thread = threading.Thread(target=self._loop, name="quire-engine", daemon=True)
        self._thread.start()

    def _submit(self, request_id: str, prompt_ids: Sequence[int], params: SamplingParams,
                stream: _Stream) -> None:
        with self._cv:
            self._check_overload(self.num_waiting() + len(self._adds))
            with self._lock:
                self._streams[request_id] = stream
            self._adds.append((request_id, prompt_ids, params))
            self._cv.notify()

    def abort(self, request_id: str) -> None:
        with self._cv:
            self._aborts.append(request_id)
            self._cv.notify()

    def num_waiting(self) -> int:
        """Requests waiting for their first step, as of the engine's last step."""
        return self._num_waiting

    def shutdown(self) -> None:
        with self._cv:
            self._stopped = True
            self._cv.notify()
        self._thread.join(timeout=10)

    # -- the engine thread -----------------------------------------------------------------
    def _loop(self) -> None:
        while True:
            with self._cv:
                while not (self._stopped or self._adds or self._aborts
                           or self.engine.has_unfinished_requests()):
                    self._cv.wait()
                if self._stopped:
                    return
                adds, self._adds = self._adds, []
                self._num_waiting += len(adds)  # counted until the step reports them
                aborts, self._aborts = self._aborts, []
            for request_id, prompt_ids, params in adds:  # adds first: an abort may follow
                self._add(request_id, prompt_ids, params)
            for request_id in aborts:
                self.engine.abort_request(request_id)
                with self._lock:
                    aborted = self._streams.pop(request_id, None) is not None
                if aborted:
                    self.metrics.observe_abort()
            try:
                outputs = self.engine.step() if self.engine.has_unfinished_requests() else []
            except Exception as exc:  # the engine is broken: fail every open stream
                logger.exception("engine step failed")
                if self.failure is None:  # the first cause is the one to report
                    self.failure = f"engine failure: {exc}"
                with self._lock:
                    open_ids = list(self._streams)
                for rid in open_ids:
                    self.engine.abort_request(rid)  # (no retry loop on a broken engine)
                    self._send(rid, EngineFailure(f"engine failure: {exc}"))
                continue
            for out in outputs:
                self._deliver(out)
            stats = self.engine.stats()
            with self._cv:
                self._num_waiting = stats.num_waiting
            self.metrics.observe_engine(stats)

    def _add(self, request_id: str, prompt_ids: Sequence[int], params: SamplingParams) -> None:
        try:
            self.engine.add_request(prompt_ids, params, request_id=request_id)
        except (ValueError, TypeError) as exc:
            self._send(request_id, exc)
