"""Configuration: frozen, keyword-only dataclasses validated on construction. EngineConfig is
what a user gives; SchedulerConfig and CacheConfig are what the engine runs with once the
backend and the model have resolved the defaults."""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any

from quire.core.sizing import KV_QUANT_DTYPES
from quire.core.spec_config import SpeculativeConfig

_DTYPES = ("auto", "float32", "float16", "bfloat16")
_GiB = 1 << 30


@dataclass(frozen=True, slots=True, kw_only=True)
class EngineConfig:
    """Everything the engine needs to start.

    model: a Hugging Face model folder (config.json + safetensors + tokenizer) or a .gguf
        file; None means the bundled demo model (quire.default_model).
    backend: backend name ("cpu", ...); None picks from QUIRE_BACKEND, else automatically.
    dtype: weight/activation dtype; "auto" takes the checkpoint's when the backend supports
        it, else the backend's default.
    block_size: tokens per KV block; None takes 16 when the backend declares it
        (Capabilities.block_sizes), else the backend's first declared size.
    num_blocks: KV blocks to allocate (block 0 is the null block); None sizes the cache from
        kv_cache_memory_bytes. (A hybrid cache, quire.core.kv_groups, takes it as the memory
        of that many whole-model blocks and allocates it as pages of a few layers.)
    max_model_len: longest sequence (prompt + output); None takes the model's limit.
    max_num_batched_tokens: the token budget of one step; None picks a default.
    quantization: weight quantization method. None: what the checkpoint says, where the
        backend has a kernel for it (a GGUF file's Q4_0/Q4_1/Q5_0/Q5_1/Q8_0 tensors stay
        packed on the cpu backend); "none": dequantize everything at load; "int8":
        quantize a dense checkpoint's projections, embedding and head to 8 bits (one scale
        per group of 32) at load (the tpu backend: its layer projections, one scale per
        output channel, for TPU's int8 matmul); another name ("gguf", or a plugin's method) requires
        that method.
    speculative_config: speculative decoding, as vLLM takes it: a dict (or its JSON text)
        such as {"method": "ngram", "num_speculative_tokens": 4}, or a SpeculativeConfig;
        None turns it off.
    tensor_parallel_size: split the model over this many ranks (one process each on this
        host for the torch family; 1: no split).
    distributed_executor_backend: how the torch family runs its ranks: "mp" (processes on
        this host, the default) or "ray" (Ray actors, any number of nodes; quire[ray]).
    kv_cache_dtype: "auto" (the model's dtype) or an 8-bit cache, "int8" or "fp8_e4m3"
        ("fp8" is taken as "fp8_e4m3"), with a scale per token and KV head: about twice
        the tokens per GiB, where the backend supports it (Capabilities.kv_cache_dtypes).
    disable_hybrid_kv_cache_manager: keep one block table for every layer of a model that
        mixes sliding-window and full-attention layers (by default, where the backend
        supports it, the windowed layers hold only their window: quire.core.kv_groups).
    """

    model: str | None = None
    backend: str | None = None
    tokenizer: str | None = None
    dtype: str = "auto"
    block_size: int | None = None
    num_blocks: int | None = None
    kv_cache_memory_bytes: int = 2 * _GiB
    max_num_seqs: int = 256
    max_num_batched_tokens: int | None = None
    max_model_len: int | None = None
    enable_prefix_caching: bool = True
    enable_chunked_prefill: bool = True
    seed: int = 0
    quantization: str | None = None
    speculative_config: SpeculativeConfig | dict[str, Any] | str | None = None
    tensor_parallel_size: int = 1
    distributed_executor_backend: str | None = None
    kv_cache_dtype: str = "auto"
    disable_hybrid_kv_cache_manager: bool = False

    def __post_init__(self) -> None:
        if self.kv_cache_dtype == "fp8":
            object.__setattr__(self, "kv_cache_dtype", "fp8_e4m3")
        if self.kv_cache_dtype not in ("auto", *KV_QUANT_DTYPES):
            raise ValueError("kv_cache_dtype must be 'auto', 'int8', 'fp8' or 'fp8_e4m3', got "
                             f"{self.kv_cache_dtype!r}")
        object.__setattr__(self, "speculative_config",
                           SpeculativeConfig.parse(self.speculative_config))
        if self.dtype not in _DTYPES:
            raise ValueError(f"dtype must be one of {_DTYPES}, got {self.dtype!r}")
        if self.block_size is not None:
            _check_positive("block_size", self.block_size)
        _check_positive("max_num_seqs", self.max_num_seqs)
        _check_positive("tensor_parallel_size", self.tensor_parallel_size)
        if self.distributed_executor_backend not in (None, "mp", "ray"):
            raise ValueError("distributed_executor_backend must be 'mp' or 'ray', got "
                             f"{self.distributed_executor_backend!r}")
        _check_positive("kv_cache_memory_bytes", self.kv_cache_memory_bytes)
        if self.num_blocks is not None and self.num_blocks < 2:
            raise ValueError(
                f"num_blocks must be at least 2 (block 0 is reserved), got {self.num_blocks}"
            )
        for name in ("max_num_batched_tokens", "max_model_len"):
            value = getattr(self, name)
            if value is not None:
                _check_positive(name, value)
        if self.backend is not None and not self.backend:
            raise ValueError("backend must be a backend name or None for automatic selection")

    @property
    def resolved_max_num_batched_tokens(self) -> int:
        return self.max_num_batched_tokens or 2048

    @classmethod
    def field_names(cls) -> tuple[str, ...]:
        return tuple(f.name for f in fields(cls))


@dataclass(frozen=True, slots=True, kw_only=True)
class SchedulerConfig:
    """The scheduler's budgets: requests running at once, tokens per step, longest sequence."""

    max_num_seqs: int
    max_num_batched_tokens: int
    max_model_len: int
    enable_chunked_prefill: bool = True


@dataclass(frozen=True, slots=True, kw_only=True)
class CacheConfig:
    """The paged KV cache: num_blocks blocks (block 0 the null block) of block_size tokens;
    with kv_groups, one block table per group of layers over a pool of num_blocks pages."""

    num_blocks: int
    block_size: int
    enable_prefix_caching: bool = True
    # Hybrid cache (a quire.core.kv_groups.KVCacheGroup per group; num_blocks: the pages of
    # the pool they share).
    kv_groups: tuple = ()


def _check_positive(name: str, value: object) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")
