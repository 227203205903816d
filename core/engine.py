"""LLMEngine: add_request / step / abort over the scheduler, KV cache manager and executor."""

from __future__ import annotations

import dataclasses
import itertools
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from quire.core.batch import build_batch
from quire.core.detokenizer import IncrementalDetokenizer, Tokenizer
from quire.core.executor import Executor, ModelInfo, ModelOutput
from quire.core.kv_cache_manager import KVCacheManager
from quire.core.outputs import CompletionOutput, Logprob, RequestMetrics, RequestOutput
from quire.core.request import Request, RequestStatus
from quire.core.sampling_params import SamplingParams
from quire.core.scheduler import Scheduler, SchedulerConfig

logger = logging.getLogger(__name__)


@dataclass(slots=True)
class _Child:
    request: Request
    detokenizer: IncrementalDetokenizer
    logprobs: list[dict[int, Logprob]] | None
    cumulative_logprob: float | None


@dataclass(slots=True)
class _Parent:
    request_id: str
    prompt: str | None
    prompt_token_ids: list[int]
    params: SamplingParams
    children: list[_Child]
    arrival_time: float
    error: str | None = None


@dataclass(slots=True)
class EngineStats:
    num_running: int
    num_waiting: int
    num_blocks: int
    num_used_blocks: int
    kv_cache_usage: float
    prefix_cache_queries: int
    prefix_cache_hits: int
    num_preemptions: int
    num_prompt_tokens: int
    num_generation_tokens: int


class LLMEngine:
    """Drives one executor. Not thread-safe: one caller steps it (the server's loop)."""

    def __init__(
        self,
        executor: Executor,
        tokenizer: Tokenizer,
        model_info: ModelInfo,
        *,
        num_blocks: int,
        block_size: int,
        max_num_seqs: int,
        max_num_batched_tokens: int,
        max_model_len: int,
        enable_prefix_caching: bool = True,
        enable_chunked_prefill: bool = True,
    ) -> None:
        self.executor = executor
        self.tokenizer = tokenizer
        self.model_info = model_info
        self.max_model_len = max_model_len
        self.kv_cache = KVCacheManager(num_blocks, block_size, enable_prefix_caching)
        self.scheduler = Scheduler(
            SchedulerConfig(max_num_seqs, max_num_batched_tokens, max_model_len,
                            enable_chunked_prefill),
            self.kv_cache,
        )
        caps = executor.capabilities()
        self._token_buckets = caps.token_buckets
        self._request_buckets = caps.request_buckets
        self._parents: dict[str, _Parent] = {}
        self._child_to_parent: dict[str, tuple[str, int]] = {}
        self._errored: list[str] = []
        self._ids = itertools.count()
        self.num_prompt_tokens = 0
        self.num_generation_tokens = 0
        self.last_model_output: ModelOutput | None = None
        # Seconds spent per phase of step(), summed over the engine's life (profiling).
        self.step_times: dict[str, float] = dict.fromkeys(
            ("schedule", "batch", "forward", "logits", "sample", "update", "output"), 0.0)
        self.backend_name = ""

    # -- requests --------------------------------------------------------------------------
    def add_request(
        self,
        prompt: str | Sequence[int],
        params: SamplingParams | None = None,
        request_id: str | None = None,
        arrival_time: float | None = None,
        cache_salt: str | None = None,
    ) -> str:
        """Queue a prompt (text or token ids). Malformed input raises ValueError; a prompt
        that can never fit the model or the cache finishes with finish_reason "error"."""
        params = params or SamplingParams()
        request_id = request_id if request_id is not None else f"req-{next(self._ids)}"
        if request_id in self._parents:
            raise ValueError(f"request id {request_id!r} is already in use")
        prompt_text, prompt_ids = self._tokenize(prompt)
        arrival = time.monotonic() if arrival_time is None else arrival_time
        error = self.check_prompt_fits(len(prompt_ids))
        max_tokens = self.max_model_len - len(prompt_ids)
        if params.max_tokens is not None:
            max_tokens = min(max_tokens, params.max_tokens)
        children = []
        for i in range(params.n):
            child_params = params
            if params.n > 1:
                seed = None if params.seed is None else params.seed + i
                child_params = dataclasses.replace(params, n=1, seed=seed)
            child_id = request_id if params.n == 1 else f"{request_id}#{i}"
            request = Request(
                child_id, prompt_ids, child_params, self.tokenizer.eos_token_id,
                self.kv_cache.block_size, max(max_tokens, 1),
                extra_keys=(cache_salt,) if cache_salt else (), arrival_time=arrival,
            )
            detok = IncrementalDetokenizer(
                self.tokenizer, prompt_ids, params.skip_special_tokens, params.stop_strings,
                params.include_stop_str_in_output,
            )
            logprobs = [] if params.logprobs is not None else None
            children.append(_Child(request, detok, logprobs, 0.0 if logprobs is not None else None))
        parent = _Parent(request_id, prompt_text, prompt_ids, params, children, arrival, error)
        self._parents[request_id] = parent
        if error is not None:
            for child in children:
                child.request.status = RequestStatus.FINISHED_ERROR
                child.request.error = error
                child.request.finished_time = arrival
            self._errored.append(request_id)
            logger.warning("request %s rejected: %s", request_id, error)
            return request_id
        for i, child in enumerate(children):
            self._child_to_parent[child.request.request_id] = (request_id, i)
            self.scheduler.add_request(child.request)
        return request_id

    def abort_request(self, request_ids: str | Sequence[str]) -> None:
        """Stop requests now and free their KV blocks; unknown ids are ignored."""
        if isinstance(request_ids, str):
            request_ids = [request_ids]
        for request_id in request_ids:
            parent = self._parents.pop(request_id, None)
            if parent is None:
                continue
            child_ids = [c.request.request_id for c in parent.children]
            self.scheduler.finish_requests(child_ids, RequestStatus.FINISHED_ABORTED)
            for child_id in child_ids:
                self._child_to_parent.pop(child_id, None)

    def has_unfinished_requests(self) -> bool:
        return bool(self._errored) or self.scheduler.has_unfinished_requests()

    def get_num_unfinished_requests(self) -> int:
        return len(self._parents)

    # -- the step --------------------------------------------------------------------------
    def step(self) -> list[RequestOutput]:
        """Schedule, run the executor once, and return outputs for every request that
        changed (cumulative text and tokens so far; finished=True at the end)."""
        touched: dict[str, _Parent] = {}
        for request_id in self._errored:
            touched[request_id] = self._parents[request_id]
        self._errored.clear()
        if self.scheduler.has_unfinished_requests():
            self._run_once(touched)
        t0 = time.perf_counter()
        outputs = [self._make_output(p) for p in touched.values()]
        for out in outputs:
            if out.finished:
                self._forget(out.request_id)
        self.step_times["output"] += time.perf_counter() - t0
        return outputs

    def _run_once(self, touched: dict[str, _Parent]) -> None:
        times, t0 = self.step_times, time.perf_counter()
        sched_out = self.scheduler.schedule()
        t1 = time.perf_counter()
        times["schedule"] += t1 - t0
        if sched_out.is_empty:
            if self.scheduler.num_running == 0 and not sched_out.preempted_ids:
                # Every admitted request fits alone (checked in add_request), so an idle
                # scheduler with waiting requests would spin forever: fail loudly instead.
                raise RuntimeError("scheduler made no progress with requests waiting; "
                                   f"waiting={self.scheduler.num_waiting}")
            return
        batch = build_batch(sched_out, self.kv_cache, self._token_buckets, self._request_buckets)
        t2 = time.perf_counter()
        times["batch"] += t2 - t1
        model_out = self.executor.execute(batch)
        t3 = time.perf_counter()
        logits_time = model_out.timings.get("logits", 0.0)
        sample_time = model_out.timings.get("sample", 0.0)
        times["forward"] += t3 - t2 - logits_time - sample_time
        times["logits"] += logits_time
        times["sample"] += sample_time
        self.last_model_output = model_out
        self.num_prompt_tokens += sum(
            min(n, max(0, r.num_prompt_tokens - r.num_computed_tokens))
            for r, n in zip(sched_out.requests, sched_out.num_new_tokens)
        )
        updated, finished = self.scheduler.update_from_output(
            sched_out, model_out.sampled_token_ids.tolist()
        )
        self.num_generation_tokens += len(updated)
        t4 = time.perf_counter()
        times["update"] += t4 - t3
        stopped: list[str] = []
        for row, request in enumerate(updated):
            parent_id, index = self._child_to_parent[request.request_id]
            parent = self._parents[parent_id]
            child = parent.children[index]
            if child.logprobs is not None:
                self._append_logprobs(child, model_out, row)
            stop = child.detokenizer.update(request.output_token_ids[-1:])
            if stop is not None:
                request.stop_reason = stop
                if request.is_finished:  # also hit a length limit: the stop string wins
                    request.status = RequestStatus.FINISHED_STOPPED
                else:
                    stopped.append(request.request_id)
            touched[parent_id] = parent
        self.scheduler.finish_requests(stopped, RequestStatus.FINISHED_STOPPED)
        for request in finished:
            parent_id, _ = self._child_to_parent[request.request_id]
            touched[parent_id] = self._parents[parent_id]
        times["output"] += time.perf_counter() - t4

    def _append_logprobs(self, child: _Child, out: ModelOutput, row: int) -> None:
        assert out.sampled_logprobs is not None and child.logprobs is not None
        k = child.request.sampling_params.logprobs or 0
        token_id = child.request.output_token_ids[-1]
        entry = {token_id: Logprob(float(out.sampled_logprobs[row]))}
        if k and out.top_token_ids is not None and out.top_logprobs is not None:
            for rank, (tid, lp) in enumerate(zip(out.top_token_ids[row, :k].tolist(),
                                                 out.top_logprobs[row, :k].tolist()), start=1):
                if tid == token_id:
                    entry[tid].rank = rank
                else:
                    entry[tid] = Logprob(lp, rank)
        for tid, lp in entry.items():
            lp.decoded_token = self.tokenizer.decode([tid], skip_special_tokens=False)
        child.logprobs.append(entry)
        child.cumulative_logprob = (child.cumulative_logprob or 0.0) + entry[token_id].logprob

    def _make_output(self, parent: _Parent) -> RequestOutput:
        completions = []
        for i, child in enumerate(parent.children):
            request = child.request
            done = request.is_finished
            if done:
                child.detokenizer.finish()
            completions.append(CompletionOutput(
                index=i,
                text=child.detokenizer.visible_text(done),
                token_ids=list(request.output_token_ids),
                finish_reason=request.status.finish_reason,
                stop_reason=request.stop_reason,
                logprobs=child.logprobs,
                cumulative_logprob=child.cumulative_logprob,
            ))
        first = parent.children[0].request
        finished = all(c.request.is_finished for c in parent.children)
        metrics = RequestMetrics(
            arrival_time=parent.arrival_time,
            first_scheduled_time=first.first_scheduled_time,
            first_token_time=min((c.request.first_token_time for c in parent.children
                                  if c.request.first_token_time is not None), default=None),
            finished_time=max(c.request.finished_time or 0.0 for c in parent.children)
            if finished else None,
            num_prompt_tokens=len(parent.prompt_token_ids),
            num_cached_tokens=max(first.num_cached_tokens, 0),
            num_generation_tokens=sum(c.request.num_output_tokens for c in parent.children),
            num_preemptions=sum(c.request.num_preemptions for c in parent.children),
        )
        return RequestOutput(
            request_id=parent.request_id,
            prompt=parent.prompt,
            prompt_token_ids=parent.prompt_token_ids,
            outputs=completions,
            finished=finished,
            metrics=metrics,
            error=parent.error,
            num_cached_tokens=metrics.num_cached_tokens,
        )

    def _forget(self, request_id: str) -> None:
        parent = self._parents.pop(request_id, None)
        if parent is not None:
            for child in parent.children:
                self._child_to_parent.pop(child.request.request_id, None)

    # -- helpers ---------------------------------------------------------------------------
    def _tokenize(self, prompt: str | Sequence[int]) -> tuple[str | None, list[int]]:
        if isinstance(prompt, str):
            ids = list(self.tokenizer.encode(prompt))
            text: str | None = prompt
        elif isinstance(prompt, (list, tuple, np.ndarray)):
            ids = [int(t) for t in prompt]
            text = None
            vocab = self.model_info.vocab_size
            bad = [t for t in ids if not 0 <= t < vocab]
            if bad:
                raise ValueError(
                    f"prompt token ids must be in [0, {vocab}); got {bad[:5]}"
                )
        else:
            raise TypeError(
                f"prompt must be a string or a list of token ids, got {type(prompt).__name__}"
            )
        if not ids:
            raise ValueError("prompt is empty: give at least one token")
        return text, ids

    def check_prompt_fits(self, num_prompt_tokens: int) -> str | None:
        """Why a prompt of this length can never run here, or None when it can."""
        if num_prompt_tokens >= self.max_model_len:
            return (
                f"prompt has {num_prompt_tokens} tokens but the model allows at most "
                f"{self.max_model_len - 1} (max_model_len={self.max_model_len} includes at "
                "least one generated token); shorten the prompt"
            )
        sched = self.scheduler.config
        if not sched.enable_chunked_prefill and num_prompt_tokens > sched.max_num_batched_tokens:
            return (
                f"prompt has {num_prompt_tokens} tokens, more than max_num_batched_tokens="
                f"{sched.max_num_batched_tokens}, and chunked prefill is off; enable chunked "
                "prefill or raise max_num_batched_tokens"
            )
        needed = self.kv_cache.num_blocks_for(num_prompt_tokens + 1)
        if needed > self.kv_cache.num_usable_blocks:
            return (
                f"prompt needs {needed} KV blocks but the cache holds only "
                f"{self.kv_cache.num_usable_blocks}; give the KV cache more memory"
            )
        return None

    def stats(self) -> EngineStats:
        kv = self.kv_cache.stats()
        return EngineStats(
            num_running=self.scheduler.num_running,
            num_waiting=self.scheduler.num_waiting,
            num_blocks=kv.num_blocks,
            num_used_blocks=kv.num_used_blocks,
            kv_cache_usage=kv.usage,
            prefix_cache_queries=kv.prefix_cache_queries,
            prefix_cache_hits=kv.prefix_cache_hits,
            num_preemptions=self.scheduler.num_preemptions,
            num_prompt_tokens=self.num_prompt_tokens,
            num_generation_tokens=self.num_generation_tokens,
        )

    def shutdown(self) -> None:
        self.executor.shutdown()
