"""The contract between the core and a backend. Nothing framework-specific lives here.

A backend implements ``Executor``; the core calls it in this order::

    cls.capabilities()                       static facts, before anything is built
    ex = cls(config, extra_models)
    info = ex.load_model(path, dtype)        sets ex.info and returns it
    n = ex.profile_num_blocks(block_size, memory_bytes)   unless config.num_blocks is set
    ex.allocate_kv_cache(n, block_size)
    ex.execute(batch) -> ModelOutput         once per engine step
    ex.shutdown()
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field

import numpy as np

from quire.core.batch import Batch
from quire.core.config import EngineConfig
from quire.core.sizing import kv_cache_bytes_per_block


@dataclass(frozen=True, slots=True, kw_only=True)
class Capabilities:
    """What a backend supports; read before the model is loaded and must touch no device.

    dtypes: engine dtypes it runs ("float32", "bfloat16", "float16"); default_dtype is used
        when the checkpoint's own dtype is not among them.
    block_sizes: KV block sizes it accepts; the engine's default is 16 when listed, else
        the first one.
    head_sizes: head sizes its kernels handle (None: any).
    token_buckets / request_buckets: static shapes. The core pads each step's token count
        and request count up to the smallest bucket that holds it (padded tokens write to
        the null block, padded requests have no tokens); empty means no padding.
    max_num_seqs: a cap on requests per step (None: the user's setting).
    fixed_block_table_width: True when Batch.block_tables must always have the same width
        (cdiv(max_model_len, block_size), at most num_blocks - 1), e.g. for compiled shapes.
    kv_cache_dtypes: the EngineConfig.kv_cache_dtype values it honours ("auto": the model's
        dtype; "int8", "fp8_e4m3": 8-bit caches, quire.core.sizing's layout).
    hybrid_kv_cache: True when it gives layers of different windows separate block tables
        over shared pages (quire.core.kv_groups): allocate_kv_cache then takes the groups,
        and layer l reads Batch.group_tables(g) of its group g. False: one table for every
        layer, and a model mixing full and sliding-window layers keeps every block.
    """

    dtypes: tuple[str, ...]
    default_dtype: str
    block_sizes: tuple[int, ...]
    head_sizes: tuple[int, ...] | None = None
    token_buckets: tuple[int, ...] = ()
    request_buckets: tuple[int, ...] = ()
    max_num_seqs: int | None = None
    fixed_block_table_width: bool = False
    kv_cache_dtypes: tuple[str, ...] = ("auto",)
    hybrid_kv_cache: bool = False

    @property
    def default_block_size(self) -> int:
        return 16 if 16 in self.block_sizes else self.block_sizes[0]


@dataclass(frozen=True, slots=True, kw_only=True)
class ModelInfo:
    """What the core needs to know of the loaded model."""

    vocab_size: int
    max_model_len: int
    num_layers: int
    num_kv_heads: int
    head_size: int
    dtype: str
    architecture: str
    # Every layer attends to at most this many positions (a sliding window): KV blocks
    # wholly before a request's window are given back as it advances. None: full attention
    # somewhere, every block is kept.
    kv_window: int | None = None
    # Each layer's window (None: full attention); empty: every layer's is kv_window. Layers
    # mixing windows get a hybrid cache (quire.core.kv_groups) where the backend allows.
    layer_windows: tuple[int | None, ...] = ()


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

    def __init__(self, config: EngineConfig, extra_models: dict | None = None,
                 extra_quantization: dict | None = None) -> None:
        """config: the user's EngineConfig (seed, max_model_len, quantization, ...).
        extra_models: architectures registered by plugins ({architectures[0]: factory});
        extra_quantization: quantization methods registered by plugins ({name: factory},
        passed only when a plugin registers some); what a factory is depends on the backend
        family."""
        self.config = config
        self.extra_models = dict(extra_models or {})
        self.extra_quantization = dict(extra_quantization or {})
        self.info: ModelInfo | None = None

    @classmethod
    @abstractmethod
    def capabilities(cls) -> Capabilities:
        """Static facts about the backend; must not touch any device."""

    @classmethod
    def tensor_parallel(cls, config: EngineConfig, args: tuple) -> Executor:
        """An executor that runs the model split over config.tensor_parallel_size devices
        (args: what cls(*args) takes). A backend that cannot refuses, as this default does."""
        raise ValueError(f"this backend ({cls.__name__}) does not run tensor parallelism; "
                         "use tensor_parallel_size=1 or a torch-family backend such as cpu")

    @abstractmethod
    def load_model(self, model_path: str, dtype: str) -> ModelInfo:
        """Read an HF model folder (config.json + safetensors) or a .gguf file and build the
        model. dtype is "auto" or one of capabilities().dtypes (quire.core.sizing.
        resolve_dtype settles "auto"). Sets self.info and returns it."""

    def kv_cache_bytes_per_block(self, block_size: int) -> int:
        """Bytes one KV block takes across all layers (keys and values). The default counts
        keys and values in the model's dtype; override for another layout (e.g. 8-bit)."""
        if self.info is None:
            raise RuntimeError("load_model must run (and set self.info) first")
        return kv_cache_bytes_per_block(self.info, block_size,
                                        getattr(self.config, "kv_cache_dtype", "auto"))

    def profile_num_blocks(self, block_size: int, memory_bytes: int) -> int:
        """How many blocks fit in memory_bytes (including the null block)."""
        return memory_bytes // self.kv_cache_bytes_per_block(block_size)

    @abstractmethod
    def allocate_kv_cache(self, num_blocks: int, block_size: int) -> None:
        """Allocate the paged cache; block 0 is the null block padded tokens write to.

        A backend declaring Capabilities.hybrid_kv_cache also takes a keyword argument
        kv_groups (a tuple of quire.core.kv_groups.KVCacheGroup, empty when the model's
        layers share one table): then num_blocks counts pages, each holding one block of
        every slot s < max(len(g.layers)); group g's s-th layer keeps its K/V in slot s
        (kv_groups.layer_slots), so layers of one slot share a cache tensor."""

    @abstractmethod
    def execute(self, batch: Batch) -> ModelOutput:
        """Run the forward pass over the packed batch and sample one token per sampled row
        (the rows of batch.logits_indices, in that order)."""

    def shutdown(self) -> None:  # noqa: B027 (optional hook, no-op by default)
        """Release weights and cache."""
