"""LLMEngine: add_request / step / abort over the scheduler, KV cache manager and executor.

Output processing (text, stop strings, logprobs) lives in output_processor.py, the fan-out
of n > 1 in parallel_sampling.py, the prompt checks in prompt_limits.py.
"""

from __future__ import annotations

import itertools
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from quire.core.batch import Batch, build_batch
from quire.core.config import CacheConfig, SchedulerConfig
from quire.core.detokenizer import Tokenizer
from quire.core.executor import Executor, ModelInfo
from quire.core.kv_cache_manager import KVCacheManager
from quire.core.kv_groups import HybridKVCacheManager
from quire.core.output_processor import OutputProcessor
from quire.core.outputs import RequestOutput
from quire.core.parallel_sampling import ParentRequest, fan_out
from quire.core.prompt_limits import PromptLimits
from quire.core.request import Request, RequestStatus
from quire.core.sampling_params import SamplingParams
from quire.core.scheduler import Scheduler, SchedulerOutput
from quire.core.sizing import block_table_width
from quire.core.spec_decode import SpecDecoder, SpecDecodeStats, accepted_counts
from quire.core.structured_outputs import StructuredOutputManager

logger = logging.getLogger(__name__)

STEP_PHASES = ("schedule", "batch", "forward", "logits", "sample", "update", "output")


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
    spec_decode: SpecDecodeStats | None = None


class LLMEngine:
    """Drives one executor. Not thread-safe: one caller steps it (the server's loop)."""

    def __init__(
        self,
        executor: Executor,
        tokenizer: Tokenizer,
        model_info: ModelInfo,
        *,
        scheduler_config: SchedulerConfig,
        cache_config: CacheConfig,
        backend_name: str = "",
        structured_outputs: StructuredOutputManager | None = None,
        speculative: SpecDecoder | None = None,
    ) -> None:
        self.executor = executor
        self.tokenizer = tokenizer
        self.model_info = model_info
        self.backend_name = backend_name
        self.max_model_len = scheduler_config.max_model_len
        self.kv_cache: KVCacheManager | HybridKVCacheManager
        if cache_config.kv_groups:
            self.kv_cache = HybridKVCacheManager(
                cache_config.kv_groups, cache_config.num_blocks, cache_config.block_size,
                cache_config.enable_prefix_caching)
        else:
            self.kv_cache = KVCacheManager(cache_config.num_blocks, cache_config.block_size,
                                           cache_config.enable_prefix_caching,
                                           window=model_info.kv_window)
        self.scheduler = Scheduler(scheduler_config, self.kv_cache)
        self.limits = PromptLimits(
            vocab_size=model_info.vocab_size, max_model_len=scheduler_config.max_model_len,
            max_num_batched_tokens=scheduler_config.max_num_batched_tokens,
            enable_chunked_prefill=scheduler_config.enable_chunked_prefill,
            block_size=cache_config.block_size,
            num_usable_blocks=self.kv_cache.pool.num_usable_blocks,
            full_groups=max(1, sum(g.window is None for g in cache_config.kv_groups)),
            windows=tuple(g.window for g in cache_config.kv_groups if g.window is not None))
        caps = executor.capabilities()
        self._token_buckets = caps.token_buckets
        self._request_buckets = caps.request_buckets
        self._table_width = block_table_width(
            self.max_model_len, cache_config.block_size, cache_config.num_blocks
        ) if caps.fixed_block_table_width else None
        self.outputs = OutputProcessor(tokenizer)
        self.structured = structured_outputs
        self.speculative = speculative
        # Parents whose constraint is still compiling: they join the scheduler when it is.
        self._awaiting_grammar: list[ParentRequest] = []
        self._errored: list[str] = []
        self._ids = itertools.count()
        self.num_prompt_tokens = 0
        self.num_generation_tokens = 0
        # Seconds spent per phase of step(), summed over the engine's life (profiling).
        self.step_times: dict[str, float] = dict.fromkeys(STEP_PHASES, 0.0)
        self.num_steps = 0  # executor steps run

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
        if request_id in self.outputs:
            raise ValueError(f"request id {request_id!r} is already in use")
        prompt_text, prompt_ids = self._tokenize(prompt)
        if params.structured_outputs is not None and self.structured is None:
            raise ValueError("structured outputs are not available in this engine (it was "
                             "built without a grammar backend)")
        arrival = time.monotonic() if arrival_time is None else arrival_time
        error = self.limits.why_not_fit(len(prompt_ids))
        max_tokens = self.max_model_len - len(prompt_ids)
        if params.max_tokens is not None:
            max_tokens = min(max_tokens, params.max_tokens)
        parent = fan_out(
            request_id=request_id, prompt=prompt_text, prompt_token_ids=prompt_ids,
            params=params, tokenizer=self.tokenizer, block_size=self.kv_cache.block_size,
            max_tokens=max_tokens, arrival_time=arrival, cache_salt=cache_salt, error=error)
        self.outputs.add(parent)
        if error is not None:
            for child in parent.children:
                child.request.status = RequestStatus.FINISHED_ERROR
                child.request.error = error
                child.request.finished_time = arrival
            self._errored.append(request_id)
            logger.warning("request %s rejected: %s", request_id, error)
            return request_id
        if params.structured_outputs is not None:
            assert self.structured is not None
            for child in parent.children:
                child.request.grammar = self.structured.new_state(params.structured_outputs)
            self._awaiting_grammar.append(parent)
            return request_id
        for child in parent.children:
            self.scheduler.add_request(child.request)
        return request_id

    def abort_request(self, request_ids: str | Sequence[str]) -> None:
        """Stop requests now and free their KV blocks; unknown ids are ignored."""
        if isinstance(request_ids, str):
            request_ids = [request_ids]
        for request_id in request_ids:
            parent = self.outputs.remove(request_id)
            if parent in self._awaiting_grammar:
                self._awaiting_grammar.remove(parent)
            elif parent is not None:
                self.scheduler.finish_requests([c.request.request_id for c in parent.children],
                                               RequestStatus.FINISHED_ABORTED)
        self._drain_finished()

    def _drain_finished(self) -> None:
        """Let the proposer drop what it keeps for requests that have finished."""
        finished, self.scheduler.finished_ids = self.scheduler.finished_ids, []
        if self.speculative is not None:
            self.speculative.forget(finished)

    def has_unfinished_requests(self) -> bool:
        return bool(self._errored or self._awaiting_grammar) or \
            self.scheduler.has_unfinished_requests()

    def get_num_unfinished_requests(self) -> int:
        return len(self.outputs)

    # -- the step --------------------------------------------------------------------------
    def step(self) -> list[RequestOutput]:
        """Schedule, run the executor once, and return outputs for every request that
        changed (cumulative text and tokens so far; finished=True at the end)."""
        touched: dict[str, ParentRequest] = {}
        for request_id in self._errored:
            touched[request_id] = self.outputs.get(request_id)
        self._errored.clear()
        if self._awaiting_grammar:
            self._admit_compiled(touched)
        if self.scheduler.has_unfinished_requests():
            self._run_once(touched)
            self.num_steps += 1
        self._drain_finished()
        t0 = time.perf_counter()
        outputs = [self.outputs.make_output(p) for p in touched.values()]
        for out in outputs:
            if out.finished:
                self.outputs.remove(out.request_id)
        self.step_times["output"] += time.perf_counter() - t0
        return outputs

    def _run_once(self, touched: dict[str, ParentRequest]) -> None:
        times, t0 = self.step_times, time.perf_counter()
        if self.speculative is not None:
            self.speculative.propose(self.scheduler.running)
            if self.structured is not None:
                self.structured.trim_drafts(self.scheduler.running)
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
        batch = build_batch(sched_out, self.kv_cache, self._token_buckets,
                            self._request_buckets, self._table_width)
        constrained, dead = self._grammar_bitmask(sched_out, batch)
        t2 = time.perf_counter()
        times["batch"] += t2 - t1
        model_out = self.executor.execute(batch)
        t3 = time.perf_counter()
        logits_time = model_out.timings.get("logits", 0.0)
        sample_time = model_out.timings.get("sample", 0.0)
        times["forward"] += t3 - t2 - logits_time - sample_time
        times["logits"] += logits_time
        times["sample"] += sample_time
        self.num_prompt_tokens += sum(
            min(n, max(0, r.num_prompt_tokens - r.num_computed_tokens))
            for r, n in zip(sched_out.requests, sched_out.num_new_tokens)
        )
        new_token_ids = self._new_tokens(batch, model_out.sampled_token_ids, sched_out)
        updated, counts, finished = self.scheduler.update_from_output(sched_out, new_token_ids)
        if constrained:
            before = [r.num_output_tokens for r in updated]
            self._advance_grammars(updated, counts, dead)
            # Tokens sampled past a grammar's end were dropped.
            counts = [c - (b - r.num_output_tokens) for c, b, r in zip(counts, before, updated)]
        self.num_generation_tokens += sum(counts)
        t4 = time.perf_counter()
        times["update"] += t4 - t3
        if self.speculative is not None and all(
                n == 1 + len(d) for n, d in zip(sched_out.num_new_tokens,
                                                sched_out.draft_token_ids)):
            # A decode step: the whole of it so far (proposing, scheduling, the batch,
            # forward, sampling, accepting) is what a drafted token really costs.
            self.speculative.observe_step(batch.num_tokens, t4 - t0)
        rows = batch.logits_row_start[:-1].tolist()
        stopped = self.outputs.process(updated, counts, rows, model_out, touched)
        self.scheduler.finish_requests(stopped, RequestStatus.FINISHED_STOPPED)
        for request in finished:
            parent = self.outputs.parent_of(request.request_id)
            touched[parent.request_id] = parent
        times["output"] += time.perf_counter() - t4

    def _new_tokens(self, batch: Batch, sampled: np.ndarray, sched_out: SchedulerOutput
                    ) -> list[list[int]]:
        """Each sampled request's new tokens: its accepted drafts (rows whose sample equals
        their draft, core/spec_decode.py) and the sample of the first row that differs."""
        spec = self.speculative
        if not batch.has_drafts:
            return [[t] for t in sampled.tolist()]
        accepted = accepted_counts(sampled, batch.draft_token_ids, batch.logits_row_start)
        starts = batch.logits_row_start[:-1]
        if spec is not None:
            requests = [sched_out.requests[i] for i in batch.sampled_req_indices.tolist()]
            spec.record(requests, np.diff(batch.logits_row_start) - 1, accepted)
        flat = sampled.tolist()
        return [flat[s : s + a + 1] for s, a in zip(starts.tolist(), accepted.tolist())]

    # -- structured outputs ----------------------------------------------------------------
    def _admit_compiled(self, touched: dict[str, ParentRequest]) -> None:
        """Schedule the parents whose constraint has compiled; fail those whose constraint
        is invalid."""
        assert self.structured is not None
        idle = not self.scheduler.has_unfinished_requests()
        ready, failed, self._awaiting_grammar = self.structured.admit(self._awaiting_grammar,
                                                                      wait=idle)
        for parent in ready:
            for child in parent.children:
                self.scheduler.add_request(child.request)
        for parent in failed:
            touched[parent.request_id] = parent
            logger.warning("request %s rejected: %s", parent.request_id, parent.error)

    def _grammar_bitmask(self, sched_out: SchedulerOutput, batch: Batch
                         ) -> tuple[bool, list[Request]]:
        """Put the step's token bitmask on the batch when a sampled row is constrained.
        Returns (whether any is, the requests whose constraint allows no token)."""
        if self.structured is None:
            return False, []
        drafts = [sched_out.draft_token_ids[i] for i in batch.sampled_req_indices.tolist()]
        mask, dead = self.structured.step_bitmask(sched_out.requests, batch.sampled_req_indices,
                                                  batch.logits_row_start, drafts)
        batch.sampling.token_bitmask = mask
        return mask is not None, dead

    def _advance_grammars(self, updated: Sequence[Request], counts: Sequence[int],
                          dead: Sequence[Request]) -> None:
        assert self.structured is not None
        complete, violated = self.structured.advance(updated, counts, dead)
        self.scheduler.finish_requests(complete, RequestStatus.FINISHED_STOPPED)
        self.scheduler.finish_requests(violated, RequestStatus.FINISHED_ERROR)

    # -- helpers ---------------------------------------------------------------------------
    def _tokenize(self, prompt: str | Sequence[int]) -> tuple[str | None, list[int]]:
        if isinstance(prompt, str):
            ids = list(self.tokenizer.encode(prompt))
            text: str | None = prompt
        elif isinstance(prompt, (list, tuple, np.ndarray)):
            ids = [int(t) for t in prompt]
            text = None
            self.limits.check_token_ids(ids)
        else:
            raise TypeError(
                f"prompt must be a string or a list of token ids, got {type(prompt).__name__}"
            )
        if not ids:
            raise ValueError("prompt is empty: give at least one token")
        return text, ids

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
            spec_decode=self.speculative.stats.snapshot() if self.speculative is not None
            else None,
        )

    def shutdown(self) -> None:
        if self.structured is not None:
            self.structured.shutdown()
        if self.speculative is not None:
            self.speculative.shutdown()
        self.executor.shutdown()
