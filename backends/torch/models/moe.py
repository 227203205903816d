"""Mixture of experts for the torch family: a softmax router picks each token's top-k experts
(renormalized for Mixtral and for Qwen3-MoE with norm_topk_prob), and the experts run fused:
the (token, expert) pairs are sorted by expert, each active expert runs one GEMM over all its
tokens, and the weighted results are summed back per token. No per-token Python: the loop
is over experts, and an expert with no tokens costs nothing.

Dimensions: T tokens, H hidden, E experts, I expert intermediate size, k experts per token.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn


def route(router_logits: torch.Tensor, top_k: int, renormalize: bool
          ) -> tuple[torch.Tensor, torch.Tensor]:
    """router_logits [T, E] -> (weights [T, k] fp32, expert ids [T, k] int64)."""
    probs = torch.softmax(router_logits.float(), dim=-1)
    weights, ids = torch.topk(probs, top_k, dim=-1)
    if renormalize:
        weights = weights / weights.sum(dim=-1, keepdim=True)
    return weights, ids


def gated(x: torch.Tensor, act: str) -> torch.Tensor:
    """[.., 2I] (gate | up) -> act(gate) * up [.., I]."""
    gate, up = x.chunk(2, dim=-1)
    g = F.silu(gate) if act == "silu" else F.gelu(gate, approximate="tanh")
    return g * up


def grouped_experts(x: torch.Tensor, weights: torch.Tensor, ids: torch.Tensor,
                    num_experts: int, run: Callable[[int, torch.Tensor], torch.Tensor]
                    ) -> torch.Tensor:
    """x [T, H]; weights, ids [T, k] -> [T, H]: sum over j of weights[t, j] *
    run(ids[t, j], x[t]), with run(expert, rows [n, H]) -> [n, H] called once per expert
    that has tokens, on all of them at once."""
    num_tokens, top_k = ids.shape
    flat = ids.reshape(-1)
    order = torch.argsort(flat, stable=True)
    counts = torch.bincount(flat, minlength=num_experts).tolist()
    token_of = order // top_k
    xs = x[token_of]
    out = torch.empty_like(xs)
    start = 0
    for expert, count in enumerate(counts):
        if count:
            out[start : start + count] = run(expert, xs[start : start + count])
            start += count
    out = out * weights.reshape(-1)[order].unsqueeze(1).to(out.dtype)
    return torch.zeros_like(x).index_add_(0, token_of, out)


def fused_moe(x: torch.Tensor, w13: torch.Tensor, w2: torch.Tensor, weights: torch.Tensor,
              ids: torch.Tensor, act: str = "silu") -> torch.Tensor:
    """x [T, H]; w13 [E, 2I, H]; w2 [E, H, I]; weights, ids [T, k] -> [T, H] in x's dtype.
    The reference semantics: sum over j of weights[t, j] * expert_{ids[t, j]}(x[t])."""
    return grouped_experts(x, weights, ids, w13.shape[0], lambda e, rows: F.linear(
        gated(F.linear(rows, w13[e]), act), w2[e]))


class MoEExperts(nn.Module):
    """A layer's experts, stacked: w13 [E, 2I, H] (gate | up), w2 [E, H, I]. A module, so a
    backend can swap in its own fused kernel (the Triton family does)."""

    def __init__(self, num_experts: int, hidden_size: int, intermediate_size: int,
                 top_k: int, renormalize: bool, act: str) -> None:
        super().__init__()
        self.w13 = nn.Parameter(torch.empty(num_experts, 2 * intermediate_size, hidden_size))
        self.w2 = nn.Parameter(torch.empty(num_experts, hidden_size, intermediate_size))
        self.top_k, self.renormalize, self.act = top_k, renormalize, act

    @classmethod
    def like(cls, other: MoEExperts) -> MoEExperts:
        """An instance of cls sharing other's parameters (how a backend swaps in its kernel)."""
        num_experts, inter2, hidden = other.w13.shape
        with torch.device("meta"):
            new = cls(num_experts, hidden, inter2 // 2, other.top_k, other.renormalize,
                      other.act)
        new.w13, new.w2 = other.w13, other.w2
        return new

    def forward(self, x: torch.Tensor, router_logits: torch.Tensor) -> torch.Tensor:
        weights, ids = route(router_logits, self.top_k, self.renormalize)
        return self.experts(x, weights, ids)

    def experts(self, x: torch.Tensor, weights: torch.Tensor, ids: torch.Tensor
                ) -> torch.Tensor:
        return fused_moe(x, self.w13, self.w2, weights, ids, self.act)


class ExpertLinears(MoEExperts):
    """Experts held as one linear module per expert and projection (up: gate | up, down),
    each a backend's own layer (oneDNN-packed, quantized, ...), run on each expert's grouped
    tokens; the stacked w13 / w2 are dropped."""

    @classmethod
    def from_linears(cls, module: MoEExperts, up: list[nn.Module], down: list[nn.Module]
                     ) -> ExpertLinears:
        new = cls.like(module)
        new.up, new.down = nn.ModuleList(up), nn.ModuleList(down)
        new.w13 = new.w2 = None  # the per-expert layers replace them
        return new

    def activate(self, h: torch.Tensor) -> torch.Tensor:
        """act(gate) * up of the up projection's output."""
        return gated(h, self.act)

    def experts(self, x: torch.Tensor, weights: torch.Tensor, ids: torch.Tensor
                ) -> torch.Tensor:
        return grouped_experts(x, weights, ids, len(self.up), lambda e, rows: self.down[e](
            self.activate(self.up[e](rows))))
