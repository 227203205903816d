"""Tensor parallelism, framework-neutral: which slice of each checkpoint tensor a rank holds
and the per-rank architecture it builds (Megatron's layout).

- column-parallel (outputs split): q/k/v by heads, gate/up by intermediate rows, each
  expert's gate/up likewise; the vocabulary rows of the embedding and the LM head;
- row-parallel (inputs split, partial sums all-reduced): o_proj by query heads, down_proj
  and each expert's down by intermediate columns;
- replicated: norms, q/k norms, the MoE router.

KV heads split by heads when there are at least as many as ranks; with fewer (MQA, GQA 8:2
at TP=4) each rank keeps the one KV head its query heads read. The vocabulary splits into
equal slices of cdiv(V, N) rows, the last one zero-padded.

Slicing works on numpy arrays and torch tensors alike (basic indexing only); a quantized
PackedWeight is sliced by rows where it is column-parallel and dequantized where the split
runs through its columns.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from quire.core.sizing import cdiv
from quire.models.config import ModelArchConfig
from quire.models.quant import PackedExperts, PackedWeight
from quire.models.weight_map import WeightTarget, shard_sizes


@dataclass(frozen=True, slots=True)
class TPShard:
    """This process's place: rank of size ranks."""

    rank: int
    size: int


@dataclass(frozen=True, slots=True)
class ShardPlan:
    """How a model splits over TPShard.size ranks, as seen from one rank."""

    cfg: ModelArchConfig  # the whole model
    shard: TPShard
    num_heads: int  # local query heads
    num_kv_heads: int  # local KV heads
    kv_head_start: int  # the first KV head this rank holds
    vocab_rows: int  # local vocabulary rows (cdiv(V, N); the last rank's padded)

    @property
    def vocab_start(self) -> int:
        return self.shard.rank * self.vocab_rows

    def local_config(self) -> ModelArchConfig:
        """The architecture this rank builds: its heads, its share of each MLP."""
        c, n = self.cfg, self.shard.size
        return dataclasses.replace(
            c, num_heads=self.num_heads, num_kv_heads=self.num_kv_heads,
            intermediate_size=c.intermediate_size // n,
            moe_intermediate_size=c.moe_intermediate_size // n, vocab_size=self.vocab_rows)

    def slice(self, target: WeightTarget, w: Any) -> Any:
        """The part of a checkpoint tensor (placed at target) this rank holds (a stack of
        packed experts is dequantized first)."""
        part = target.part
        if isinstance(w, PackedExperts):
            w = w.dequantize()
        if part.startswith("qkv_proj."):
            return self._fused_rows(target, w, self._qkv_ranges())
        if part.startswith("gate_up_proj.") or part == "experts.w13":
            inter = shard_sizes(self.cfg, part)[0]
            a, b = self._split(inter)
            if part == "experts.w13" and target.expert is None:  # the stack [E, 2I, H]
                return _concat([_take(w, a, b, axis=1), _take(w, inter + a, inter + b, axis=1)],
                               axis=1)
            return self._fused_rows(target, w, [(a, b), (a, b)])
        if part == "o_proj.weight":
            d = self.cfg.head_size
            return _take(w, self.shard.rank * self.num_heads * d,
                         (self.shard.rank + 1) * self.num_heads * d, axis=-1)
        if part in ("down_proj.weight", "experts.w2"):
            inter = self.cfg.intermediate_size if part == "down_proj.weight" \
                else self.cfg.moe_intermediate_size
            return _take(w, *self._split(inter), axis=-1)
        if part in ("embed_tokens.weight", "lm_head.weight"):
            return _pad_rows(_take(w, self.vocab_start, self.vocab_start + self.vocab_rows,
                                   axis=0), self.vocab_rows)
        return w  # replicated

    # -- helpers ---------------------------------------------------------------------------
    def _split(self, size: int) -> tuple[int, int]:
        step = size // self.shard.size
        return self.shard.rank * step, (self.shard.rank + 1) * step

    def _qkv_ranges(self) -> list[tuple[int, int]]:
        """Rows of q, k, v (each inside its own shard) this rank keeps."""
        d = self.cfg.head_size
        q = (self.shard.rank * self.num_heads * d, (self.shard.rank + 1) * self.num_heads * d)
        kv = (self.kv_head_start * d, (self.kv_head_start + self.num_kv_heads) * d)
        return [q, kv, kv]

    def _fused_rows(self, target: WeightTarget, w: Any, ranges: list[tuple[int, int]]) -> Any:
        """Slice one shard of a fused parameter, or each shard of a whole fused tensor."""
        if target.shard is not None:
            return _take(w, *ranges[target.shard], axis=0)
        sizes = shard_sizes(self.cfg, target.part)
        offsets = [sum(sizes[:i]) for i in range(len(sizes))]
        return _concat([_take(w, off + a, off + b, axis=0)
                        for off, (a, b) in zip(offsets, ranges)], axis=0)


def plan(cfg: ModelArchConfig, shard: TPShard) -> ShardPlan:
    """The ShardPlan of a rank; ValueError when the model does not split over shard.size."""
    n = shard.size
    checks = [("attention heads", cfg.num_heads), ("MLP intermediate size",
                                                    cfg.intermediate_size)]
    if cfg.num_experts:
        checks.append(("expert intermediate size", cfg.moe_intermediate_size))
    for what, value in checks:
        if value % n:
            raise ValueError(f"tensor_parallel_size {n} does not divide the model's {what} "
                             f"({value}); pick a size that does")
    if cfg.num_kv_heads >= n:
        if cfg.num_kv_heads % n:
            raise ValueError(f"tensor_parallel_size {n} does not divide the model's "
                             f"{cfg.num_kv_heads} KV heads")
        kv_heads, kv_start = cfg.num_kv_heads // n, shard.rank * cfg.num_kv_heads // n
    else:
        if n % cfg.num_kv_heads:
            raise ValueError(f"tensor_parallel_size {n} is not a multiple of the model's "
                             f"{cfg.num_kv_heads} KV heads")
        kv_heads, kv_start = 1, shard.rank * cfg.num_kv_heads // n
    return ShardPlan(cfg, shard, cfg.num_heads // n, kv_heads, kv_start,
                     cdiv(cfg.vocab_size, n))


def _take(w: Any, start: int, stop: int, axis: int) -> Any:
    if isinstance(w, PackedWeight):
        if axis == 0:
            import numpy as np

            return w.rows(np.arange(start, min(stop, w.shape[0])))
        w = w.dequantize()
    index = [slice(None)] * w.ndim
    index[axis] = slice(start, stop)
    return w[tuple(index)]


def _concat(parts: list[Any], axis: int) -> Any:
    if all(isinstance(p, PackedWeight) for p in parts):
        from quire.models.quant import concat_rows

        return concat_rows(parts)
    parts = [p.dequantize() if isinstance(p, PackedWeight) else p for p in parts]
    if hasattr(parts[0], "numpy"):  # torch
        import torch

        return torch.cat([torch.as_tensor(p) for p in parts], dim=axis)
    import numpy as np

    return np.concatenate(parts, axis=axis)


def _pad_rows(w: Any, rows: int) -> Any:
    """Zero rows up to `rows` (the last rank's vocabulary slice)."""
    if w.shape[0] == rows:
        return w
    if isinstance(w, PackedWeight):
        w = w.dequantize()
    if hasattr(w, "numpy"):
        import torch

        return torch.cat([w, w.new_zeros(rows - w.shape[0], *w.shape[1:])])
    import numpy as np

    return np.concatenate([w, np.zeros((rows - w.shape[0], *w.shape[1:]), w.dtype)])
