"""The Triton fused MoE (grouped GEMM over expert-sorted, block-padded pairs) against the
torch family's fused MoE and a plain per-token loop, in Triton's interpreter."""

from __future__ import annotations

import pytest
import torch

from quire.backends.torch.models.moe import fused_moe, route
from quire.backends.triton.moe import align_pairs, triton_fused_moe
from tests.torch.test_moe import per_token_moe


def test_align_pairs_pads_each_expert_to_the_block():
    ids = torch.tensor([[2, 0], [2, 3], [2, 0]])  # expert 1 gets nothing
    sorted_ids, block_expert = align_pairs(ids, num_experts=4, block_m=4)
    assert sorted_ids.numel() % 4 == 0 and block_expert.numel() == sorted_ids.numel() // 4
    pad = ids.numel()
    blocks = sorted_ids.view(-1, 4).tolist()
    assert block_expert.tolist()[:3] == [0, 2, 3]
    assert set(block_expert.tolist()[3:]) <= {-1}
    assert blocks[0] == [1, 5, pad, pad] and blocks[1] == [0, 2, 4, pad]
    assert blocks[2] == [3, pad, pad, pad]


@pytest.mark.parametrize("num_tokens,experts,top_k,hidden,inter,dtype,act", [
    (1, 4, 2, 32, 48, torch.float32, "silu"),  # decode: two blocks, most experts idle
    (13, 6, 2, 64, 40, torch.float32, "gelu_tanh"),  # N and K not multiples of the tiles
    (40, 8, 3, 96, 64, torch.float16, "silu"),  # many tokens per expert, fp16
    (9, 5, 1, 48, 32, torch.bfloat16, "silu"),  # top-1, bf16 (widened under the interpreter)
])
def test_triton_moe_matches_reference(num_tokens, experts, top_k, hidden, inter, dtype, act):
    g = torch.Generator().manual_seed(num_tokens)
    x = torch.randn(num_tokens, hidden, generator=g).to(dtype)
    w13 = (torch.randn(experts, 2 * inter, hidden, generator=g) / hidden**0.5).to(dtype)
    w2 = (torch.randn(experts, hidden, inter, generator=g) / inter**0.5).to(dtype)
    weights, ids = route(torch.randn(num_tokens, experts, generator=g), top_k, True)
    got = triton_fused_moe(x, w13, w2, weights, ids, act)
    ref = fused_moe(x.float(), w13.float(), w2.float(), weights, ids, act)
    tol = {torch.float32: 1e-4, torch.float16: 2e-2, torch.bfloat16: 5e-2}[dtype]
    torch.testing.assert_close(got.float(), ref, atol=tol, rtol=tol)
    if dtype == torch.float32:
        torch.testing.assert_close(got, per_token_moe(x, w13, w2, weights, ids, act),
                                   atol=1e-4, rtol=1e-4)
