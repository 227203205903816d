"""Engine configuration: one frozen dataclass, validated on construction."""

from __future__ import annotations

from dataclasses import dataclass, fields

_DTYPES = ("auto", "float32", "float16", "bfloat16")
_GiB = 1 << 30


@dataclass(frozen=True, slots=True)
class EngineConfig:
    """Everything the engine needs to start.

    model: a Hugging Face model folder (config.json + safetensors + tokenizer) or a .gguf
        file; None means the bundled demo model (quire.default_model).
    backend: backend name ("cpu", ...); None picks from QUIRE_BACKEND, else automatically.
    dtype: weight/activation dtype; "auto" takes the backend's default for the model.
    num_blocks: KV blocks to allocate (block 0 is the null block); None sizes the cache from
        kv_cache_memory_bytes.
    max_model_len: longest sequence (prompt + output); None takes the model's limit.
    max_num_batched_tokens: the token budget of one step; None picks a default.
    """

    model: str | None = None
    backend: str | None = None
    tokenizer: str | None = None
    dtype: str = "auto"
    block_size: int = 16
    num_blocks: int | None = None
    kv_cache_memory_bytes: int = 2 * _GiB
    max_num_seqs: int = 256
    max_num_batched_tokens: int | None = None
    max_model_len: int | None = None
    enable_prefix_caching: bool = True
    enable_chunked_prefill: bool = True
    seed: int = 0

    def __post_init__(self) -> None:
        if self.dtype not in _DTYPES:
            raise ValueError(f"dtype must be one of {_DTYPES}, got {self.dtype!r}")
        _check_positive("block_size", self.block_size)
        _check_positive("max_num_seqs", self.max_num_seqs)
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


def _check_positive(name: str, value: object) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")
