"""The contract between the core and a backend. Nothing framework-specific lives here."""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field

import numpy as np

from quire.core.batch import Batch
from quire.core.config import EngineConfig


@dataclass(frozen=True, slots=True)
class Capabilities:
    """What a backend supports. Empty bucket tuples mean "any shape, no padding"."""

    dtypes: tuple[str, ...]
    default_dtype: str
    block_sizes: tuple[int, ...]
    head_sizes: tuple[int, ...] | None = None  # None: any
    token_buckets: tuple[int, ...] = ()
    request_buckets: tuple[int, ...] = ()
    max_num_seqs: int | None = None


@dataclass(frozen=True, slots=True)
class ModelInfo:
    """What the core needs to know of the loaded model."""

    vocab_size: int
    max_model_len: int
    num_layers: int
    num_kv_heads: int
    head_size: int
    dtype: str
    architecture: str


@dataclass(slots=True)
class ModelOutput:
    """Result of one execute(): one row per sampled request (Batch.logits_indices order)."""

    sampled_token_ids: np.ndarray  # [S] int64
    # When some row asked for logprobs (k = the largest request):
    sampled_logprobs: np.ndarray | None = None  # [S] float32
    top_token_ids: np.ndarray | None = None  # [S, k] int64
    top_logprobs: np.ndarray | None = None  # [S, k] float32
    # Optional seconds per phase: "sample" and "logits" are split out of the step profile.
    timings: dict[str, float] = field(default_factory=dict)


class Executor(ABC):
    """A backend: owns the model weights, the KV cache layout and the forward pass.

    Lifecycle: load_model -> profile_num_blocks -> allocate_kv_cache -> execute* -> shutdown.
    """

    def __init__(self, config: EngineConfig, extra_models: dict | None = None) -> None:
        """extra_models: architectures registered by plugins ({architectures[0]: factory});
        what a factory is depends on the backend family."""
        self.config = config
        self.extra_models = dict(extra_models or {})

    @classmethod
    @abstractmethod
    def capabilities(cls) -> Capabilities:
        """Static facts about the backend; must not touch any device."""

    @abstractmethod
    def load_model(self, model_path: str, dtype: str) -> ModelInfo:
        """Read an HF model folder (config.json + safetensors) and build the model."""

    @abstractmethod
    def kv_cache_bytes_per_block(self, block_size: int) -> int:
        """Bytes one KV block takes across all layers (keys and values)."""

    def profile_num_blocks(self, block_size: int, memory_bytes: int) -> int:
        """How many blocks fit in memory_bytes (including the null block)."""
        return memory_bytes // self.kv_cache_bytes_per_block(block_size)

    @abstractmethod
    def allocate_kv_cache(self, num_blocks: int, block_size: int) -> None:
        """Allocate the paged cache; block 0 is the null block padded tokens write to."""

    @abstractmethod
    def execute(self, batch: Batch) -> ModelOutput:
        """Run the forward pass over the packed batch and sample one token per sampled row."""

    def shutdown(self) -> None:  # noqa: B027 (optional hook, no-op by default)
        """Release weights and cache."""
