"""Tensor parallelism in the torch family: the collectives a sharded model needs, put into a
loaded model by wrapping modules (quire.models.tensor_parallel decides the slices).

- RowParallel around o_proj, down_proj and the experts: each rank holds a slice of the
  inputs, so its output is a partial sum, all-reduced;
- VocabParallelEmbedding: each rank looks up the ids in its vocabulary slice (zeros for
  the others), all-reduced;
- GatheredLMHead: each rank's logits for its vocabulary slice, gathered to rank 0 (which
  alone samples); other ranks get None.

Collectives go through torch.distributed in the group the communicator names: gloo on
CPU; the platform's own (NCCL, RCCL) elsewhere.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn

from quire.models.tensor_parallel import ShardPlan


@dataclass
class Communicator:
    """The process group of one tensor-parallel model."""

    rank: int
    size: int
    group: dist.ProcessGroup | None = None
    seconds: float = 0.0  # spent in collectives (waiting for peers included), for profiles

    def all_reduce(self, x: torch.Tensor) -> torch.Tensor:
        start = time.perf_counter()
        dist.all_reduce(x, group=self.group)
        self.seconds += time.perf_counter() - start
        return x

    def gather_rows(self, x: torch.Tensor) -> torch.Tensor | None:
        """[T, V/N] from every rank -> [T, V] on rank 0 (None on the others)."""
        start = time.perf_counter()
        x = x.contiguous()
        parts = [torch.empty_like(x) for _ in range(self.size)] if self.rank == 0 else None
        dist.gather(x, parts, dst=0, group=self.group)
        out = torch.cat(parts, dim=-1) if parts is not None else None
        self.seconds += time.perf_counter() - start
        return out


class RowParallel(nn.Module):
    def __init__(self, inner: nn.Module, comm: Communicator) -> None:
        super().__init__()
        self.inner, self.comm = inner, comm

    def forward(self, *args: torch.Tensor) -> torch.Tensor:
        return self.comm.all_reduce(self.inner(*args))


class VocabParallelEmbedding(nn.Module):
    def __init__(self, inner: nn.Module, comm: Communicator, start: int, rows: int) -> None:
        super().__init__()
        self.inner, self.comm, self.start, self.rows = inner, comm, start, rows

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        local = ids - self.start
        mine = (local >= 0) & (local < self.rows)
        out = self.inner(torch.where(mine, local, 0))
        out = out * mine.unsqueeze(-1).to(out.dtype)
        return self.comm.all_reduce(out)


class GatheredLMHead(nn.Module):
    def __init__(self, inner: nn.Module, comm: Communicator, vocab_size: int) -> None:
        super().__init__()
        self.inner, self.comm, self.vocab_size = inner, comm, vocab_size

    def forward(self, hidden: torch.Tensor) -> torch.Tensor | None:
        logits = self.comm.gather_rows(self.inner(hidden))
        return None if logits is None else logits[:, : self.vocab_size]


def parallelize(model: nn.Module, plan: ShardPlan, comm: Communicator) -> None:
    """Wrap a model built from plan.local_config() (and loaded with its slices) with the
    collectives above. Expects the built-in decoder's module names."""
    for layer in model.layers:
        for name, child in list(layer.named_children()):
            if name in ("o_proj", "down_proj", "experts"):
                setattr(layer, name, RowParallel(child, comm))
    model.embed_tokens = VocabParallelEmbedding(model.embed_tokens, comm, plan.vocab_start,
                                                plan.vocab_rows)
    model.lm_head = GatheredLMHead(model.lm_head, comm, plan.cfg.vocab_size)
