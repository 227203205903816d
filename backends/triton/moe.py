"""Fused mixture of experts in Triton (shared by the cuda and rocm backends).

The (token, expert) pairs of a step are sorted by expert and each expert's run is padded up
to a multiple of BLOCK_M, so every row block of the sorted list belongs to one expert. One
launch of _grouped_gemm_kernel then serves all experts: program (m, n) reads its block's
expert id, gathers its BLOCK_M rows of activations, and multiplies them by that expert's
weight tile, K-loop by K-loop, in fp32. Two launches make a layer: x @ w13[e]^T (rows
gathered by token), act(gate) * up in torch, then @ w2[e]^T times the router weight; the
k results per token are summed with one reshape. Everything is built with torch ops on the
device (no host sync), so CUDA graphs can capture it.

Dimensions: T tokens, k experts per token, P = T * k pairs, E experts, H hidden, I expert
intermediate size; BM, BN, BK the tile sizes.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from quire.backends.torch.models.moe import MoEExperts, gated
from quire.backends.triton.config import interpreting
from quire.core.sizing import cdiv


@triton.jit
def _grouped_gemm_kernel(a_ptr, b_ptr, c_ptr, weights_ptr, sorted_ptr, block_expert_ptr,
                         num_pairs, N, K, stride_am, stride_be, stride_bn, stride_cm,
                         ROW_DIV: tl.constexpr, MUL_WEIGHT: tl.constexpr,
                         BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
                         UPCAST_DOT: tl.constexpr):
    """c[pair, :] = a[pair // ROW_DIV, :] @ b[expert]^T (* weights[pair]) for the pairs of
    row block program_id(0); b: [E, N, K] with unit stride along K; padding pairs carry
    the id num_pairs and blocks past the end carry expert -1."""
    pid_m = tl.program_id(0)
    pid_n = tl.program_id(1)
    expert = tl.load(block_expert_ptr + pid_m)
    if expert < 0:
        return
    pairs = tl.load(sorted_ptr + pid_m * BLOCK_M + tl.arange(0, BLOCK_M))
    valid = pairs < num_pairs
    rows = tl.where(valid, pairs // ROW_DIV, 0).to(tl.int64)
    cols = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    ks = tl.arange(0, BLOCK_K)
    a_tile = a_ptr + rows[:, None] * stride_am + ks[None, :]
    b_tile = b_ptr + expert.to(tl.int64) * stride_be + cols[None, :] * stride_bn + ks[:, None]
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for k0 in range(0, K, BLOCK_K):
        k_ok = ks < K - k0
        a = tl.load(a_tile, mask=valid[:, None] & k_ok[None, :], other=0.0)
        b = tl.load(b_tile, mask=k_ok[:, None] & (cols[None, :] < N), other=0.0)
        if UPCAST_DOT:
            a, b = a.to(tl.float32), b.to(tl.float32)
        acc += tl.dot(a, b, input_precision="ieee")
        a_tile += BLOCK_K
        b_tile += BLOCK_K
    if MUL_WEIGHT:
        acc *= tl.load(weights_ptr + pairs, mask=valid, other=0.0)[:, None]
    out = c_ptr + pairs.to(tl.int64)[:, None] * stride_cm + cols[None, :]
    tl.store(out, acc.to(c_ptr.dtype.element_ty), mask=valid[:, None] & (cols[None, :] < N))


def align_pairs(ids: torch.Tensor, num_experts: int, block_m: int
                ) -> tuple[torch.Tensor, torch.Tensor]:
    """ids [T, k] -> (sorted pair ids [P + E*(BM-1)] rounded up to a multiple of BM, padded
    with P; the expert of each BM-row block [len / BM], -1 past the last). Pair p is token
    p // k's j = p % k-th choice."""
    flat = ids.reshape(-1)
    num_pairs = flat.numel()
    capacity = cdiv(num_pairs + num_experts * (block_m - 1), block_m) * block_m
    # (scatter_add, not bincount: bincount reads the ids' max on the host, which a CUDA
    # graph cannot capture)
    counts = torch.zeros(num_experts, dtype=torch.long, device=ids.device).scatter_add_(
        0, flat, torch.ones_like(flat))
    padded = (counts + block_m - 1) // block_m * block_m
    starts = torch.cumsum(padded, 0) - padded  # each expert's first slot
    order = torch.argsort(flat, stable=True)
    first_of_expert = torch.cumsum(counts, 0) - counts
    expert_sorted = flat[order]
    rank = torch.arange(num_pairs, device=ids.device) - first_of_expert[expert_sorted]
    sorted_ids = torch.full((capacity,), num_pairs, dtype=torch.int32, device=ids.device)
    sorted_ids[starts[expert_sorted] + rank] = order.to(torch.int32)
    # Block b starts at slot b * BM: its expert is the number of experts whose padded run
    # ends at or before that slot; past the last run, -1.
    block_starts = torch.arange(0, capacity, block_m, device=ids.device)
    block_expert = torch.searchsorted(torch.cumsum(padded, 0), block_starts, right=True)
    block_expert = torch.where(block_expert < num_experts, block_expert, -1)
    return sorted_ids, block_expert.to(torch.int32)


def grouped_gemm(a: torch.Tensor, b: torch.Tensor, sorted_ids: torch.Tensor,
                 block_expert: torch.Tensor, num_pairs: int, row_div: int,
                 weights: torch.Tensor | None = None, block_m: int = 16) -> torch.Tensor:
    """[P, N]: row p = a[p // row_div] @ b[expert of p]^T (* weights[p]); b [E, N, K]."""
    n, k = b.shape[1], b.shape[2]
    b = b if b.stride(2) == 1 else b.contiguous()
    a = a if a.stride(1) == 1 else a.contiguous()
    c = torch.empty(num_pairs, n, dtype=a.dtype, device=a.device)
    block_n = min(64, triton.next_power_of_2(n))
    block_k = min(64, max(16, triton.next_power_of_2(k)))
    grid = (block_expert.numel(), cdiv(n, block_n))
    w = weights if weights is not None else c  # unused pointer when not MUL_WEIGHT
    _grouped_gemm_kernel[grid](
        a, b, c, w, sorted_ids, block_expert, num_pairs, n, k, a.stride(0), b.stride(0),
        b.stride(1), c.stride(0), ROW_DIV=row_div, MUL_WEIGHT=weights is not None,
        BLOCK_M=block_m, BLOCK_N=block_n, BLOCK_K=block_k,
        UPCAST_DOT=a.dtype == torch.bfloat16 and interpreting())
    return c


def triton_fused_moe(x: torch.Tensor, w13: torch.Tensor, w2: torch.Tensor,
                     weights: torch.Tensor, ids: torch.Tensor, act: str = "silu",
                     block_m: int = 16) -> torch.Tensor:
    """The semantics of quire.backends.torch.models.moe.fused_moe, in two Triton launches."""
    num_tokens, top_k = ids.shape
    num_pairs = num_tokens * top_k
    sorted_ids, block_expert = align_pairs(ids, w13.shape[0], block_m)
    h = grouped_gemm(x, w13, sorted_ids, block_expert, num_pairs, top_k, block_m=block_m)
    out = grouped_gemm(gated(h, act), w2, sorted_ids, block_expert, num_pairs, 1,
                       weights.reshape(-1).float(), block_m)
    return out.view(num_tokens, top_k, -1).sum(dim=1)


class TritonMoEExperts(MoEExperts):
    """MoEExperts whose experts run in the Triton grouped GEMM."""

    def experts(self, x: torch.Tensor, weights: torch.Tensor, ids: torch.Tensor
                ) -> torch.Tensor:
        return triton_fused_moe(x, self.w13, self.w2, weights, ids, self.act)


def use_triton_moe(model: torch.nn.Module) -> int:
    """Swap the model's MoEExperts for TritonMoEExperts (same parameters); returns how many."""
    from quire.backends.torch.swap import replace_modules

    def convert(module: torch.nn.Module) -> torch.nn.Module | None:
        return TritonMoEExperts.like(module) if type(module) is MoEExperts else None

    return replace_modules(model, convert)
