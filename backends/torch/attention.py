"""The attention seam of the torch family: one AttentionImpl per backend.

Dimensions: T tokens, Hq query heads, Hkv KV heads, D head size, N blocks, S block size,
R requests, B max blocks per request.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field

import numpy as np
import torch

from quire.backends.torch.workspace import Workspace


@dataclass(slots=True)
class AttentionMetadata:
    slot_mapping: torch.Tensor  # [T] int64
    query_start_loc: torch.Tensor  # [R+1] int32
    seq_lens: torch.Tensor  # [R] int32
    block_tables: torch.Tensor  # [R, B] int32
    # Host copies for implementations that plan on the CPU.
    query_start_loc_host: np.ndarray  # [R+1]
    seq_lens_host: np.ndarray  # [R]
    num_reqs: int
    max_query_len: int
    max_seq_len: int
    # Scratch buffers shared by all layers of a step (None: the impl allocates its own).
    workspace: Workspace | None = field(default=None)
    # Per-step planning an implementation derives from the batch alone (row groups, masks),
    # computed by the first layer and reused by the others.
    plan_cache: dict = field(default_factory=dict)
    # Hybrid KV cache (quire.core.kv_groups): each layer's metadata (its group's block
    # tables and slot mapping); None: this one serves every layer.
    layer_metadata: list[AttentionMetadata] | None = None

    def for_layer(self, layer: int) -> AttentionMetadata:
        """The metadata layer `layer` attends with (a model's forward passes this on)."""
        return self if self.layer_metadata is None else self.layer_metadata[layer]

    @classmethod
    def from_canonical(cls, query_start_loc: torch.Tensor, seq_lens: torch.Tensor,
                       block_tables: torch.Tensor) -> AttentionMetadata:
        """Metadata for a canonical paged_attention call (no K/V write: empty slot_mapping).
        query_start_loc [R+1], seq_lens [R], block_tables [R, B]: int32 CPU tensors."""
        qsl, lens = query_start_loc.cpu().numpy(), seq_lens.cpu().numpy()
        return cls(
            slot_mapping=torch.zeros(0, dtype=torch.long, device=seq_lens.device),
            query_start_loc=query_start_loc, seq_lens=seq_lens, block_tables=block_tables,
            query_start_loc_host=qsl, seq_lens_host=lens, num_reqs=len(lens),
            max_query_len=int((qsl[1:] - qsl[:-1]).max(initial=0)),
            max_seq_len=int(lens.max(initial=0)),
        )


class AttentionImpl(ABC):
    """Paged attention over packed ragged queries: mixed prefill and decode, GQA, causal.

    The queries of request i are the last (query_start_loc[i+1] - query_start_loc[i]) of its
    seq_lens[i] positions.

    8-bit KV caches (--kv-cache-dtype int8 | fp8_e4m3): an implementation that declares
    them in kv_quant_dtypes gets a subclass with kv_quant set to the kind, and caches in
    backends/torch/kv_quant.py's layout (uint8, each row D values then a float32 scale)."""

    kv_quant_dtypes: tuple[str, ...] = ()
    kv_quant: str | None = None

    def __init__(self, num_heads: int, num_kv_heads: int, head_size: int, scale: float,
                 sliding_window: int | None = None, soft_cap: float | None = None) -> None:
        if num_heads % num_kv_heads:
            raise ValueError(f"num_heads {num_heads} is not a multiple of num_kv_heads "
                             f"{num_kv_heads}")
        self.num_heads = num_heads
        self.num_kv_heads = num_kv_heads
        self.head_size = head_size
        self.scale = scale
        self.sliding_window = sliding_window
        self.soft_cap = soft_cap

    @staticmethod
    def kv_cache_shape(num_blocks: int, block_size: int, num_kv_heads: int,
                       head_size: int) -> tuple[int, ...]:
        """Shape of one layer's cache tensor (the layout is the backend's own). Default:
        [2, N, S, Hkv, D], keys then values, each half in the canonical layout."""
        return (2, num_blocks, block_size, num_kv_heads, head_size)

    @abstractmethod
    def write_kv(self, key: torch.Tensor, value: torch.Tensor, kv_cache: torch.Tensor,
                 slot_mapping: torch.Tensor) -> None:
        """key, value [T, Hkv, D] into the cache at slot_mapping [T] (padding: slot 0)."""

    @abstractmethod
    def forward(self, query: torch.Tensor, kv_cache: torch.Tensor,
                metadata: AttentionMetadata) -> torch.Tensor:
        """query [T, Hq, D] -> output [T, Hq, D]."""
