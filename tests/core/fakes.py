"""A framework-free executor and tokenizer, so the core is tested without torch."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from quire.core.batch import Batch
from quire.core.config import CacheConfig, SchedulerConfig
from quire.core.engine import LLMEngine
from quire.core.executor import Capabilities, Executor, ModelInfo, ModelOutput
from quire.core.request import Request
from quire.core.sampling_params import SamplingParams

VOCAB = 100


class CharTokenizer:
    """Token id i <-> character chr(ord('a') + i % 26); id 99 is EOS (decodes to '')."""

    eos_token_id = 99

    def encode(self, text: str) -> list[int]:
        return [ord(c) - ord("a") for c in text]

    def decode(self, token_ids: Sequence[int], skip_special_tokens: bool = True) -> str:
        return "".join("" if t == 99 else chr(ord("a") + t % 26) for t in token_ids)


class CountingExecutor(Executor):
    """Samples (last input token + 1) % 26 for every sampled row; records every batch."""

    def __init__(self, script: dict[int, int] | None = None) -> None:
        super().__init__(config=None)  # type: ignore[arg-type]
        self.batches: list[Batch] = []

    @classmethod
    def capabilities(cls) -> Capabilities:
        return Capabilities(dtypes=("float32",), default_dtype="float32", block_sizes=(4,))

    def load_model(self, model_path: str, dtype: str) -> ModelInfo:
        self.info = MODEL_INFO
        return MODEL_INFO

    def allocate_kv_cache(self, num_blocks: int, block_size: int) -> None:
        pass

    def execute(self, batch: Batch) -> ModelOutput:
        self.batches.append(batch)
        last = batch.input_ids[batch.logits_indices].astype(np.int64)
        return ModelOutput((last + 1) % 26)


MODEL_INFO = ModelInfo(vocab_size=VOCAB, max_model_len=64, num_layers=1, num_kv_heads=1,
                       head_size=4, dtype="float32", architecture="Fake")


def make_engine(num_blocks: int = 32, block_size: int = 4, max_num_seqs: int = 8,
                max_num_batched_tokens: int = 64, max_model_len: int = 64,
                enable_prefix_caching: bool = True, enable_chunked_prefill: bool = True,
                executor: Executor | None = None, speculative: Any = None) -> LLMEngine:
    return LLMEngine(
        executor or CountingExecutor(), CharTokenizer(), MODEL_INFO,
        scheduler_config=sched_config(max_num_seqs, max_num_batched_tokens, max_model_len,
                                      enable_chunked_prefill),
        cache_config=CacheConfig(num_blocks=num_blocks, block_size=block_size,
                                 enable_prefix_caching=enable_prefix_caching),
        speculative=speculative,
    )


def sched_config(max_num_seqs: int, max_num_batched_tokens: int, max_model_len: int,
                 enable_chunked_prefill: bool = True) -> SchedulerConfig:
    return SchedulerConfig(max_num_seqs=max_num_seqs,
                           max_num_batched_tokens=max_num_batched_tokens,
                           max_model_len=max_model_len,
                           enable_chunked_prefill=enable_chunked_prefill)


def make_request(request_id: str, prompt_token_ids: list[int], sampling_params: SamplingParams,
                 eos_token_id: int | None, block_size: int, max_tokens: int,
                 **kwargs: Any) -> Request:
    """Request with its leading fields given in order (Request itself is keyword-only)."""
    return Request(request_id=request_id, prompt_token_ids=prompt_token_ids,
                   sampling_params=sampling_params, eos_token_id=eos_token_id,
                   block_size=block_size, max_tokens=max_tokens, **kwargs)


def check_invariants(engine: LLMEngine) -> None:
    """Every block's ref count equals the number of requests holding it."""
    holders: dict[int, int] = {}
    for blocks in engine.kv_cache.req_to_blocks.values():
        for b in blocks:
            holders[b.block_id] = holders.get(b.block_id, 0) + 1
    pool = engine.kv_cache.pool
    for block in pool.blocks[1:]:
        assert block.ref_cnt == holders.get(block.block_id, 0), block
    free_ids = set(pool.free_queue.block_ids())
    assert free_ids == {b.block_id for b in pool.blocks[1:] if b.ref_cnt == 0}


def run_to_completion(engine: LLMEngine, max_steps: int = 1000) -> dict:
    finished = {}
    for _ in range(max_steps):
        if not engine.has_unfinished_requests():
            return finished
        for out in engine.step():
            if out.finished:
                finished[out.request_id] = out
        check_invariants(engine)
    raise AssertionError("engine did not finish")
