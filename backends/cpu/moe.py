"""The cpu backend's experts: each expert's two projections held in oneDNN's packed layout
(backends/cpu/linear.py), which small per-expert row counts (decode: a few tokens per
expert) run 1.3-1.7x faster than F.linear in bf16 on the dev box; or, for bf16 SiLU experts
where the native build has AVX-512 BF16, in the layout of quire's own GEMM (gemm_csrc.py,
faster again at those row counts). With the native kernels built, a SiLU layer runs routing,
grouping and every expert in one C++ call (moe_csrc.py); otherwise the torch path groups the
tokens and runs the packed layers. Swapped in after loading when oneDNN runs the model's
dtype."""

from __future__ import annotations

import torch
from torch import nn

from quire.backends.cpu import native
from quire.backends.cpu.linear import (
    PAD_RULE,
    PackedLinear,
    VnniLinear,
    bf16_gemm_available,
    onednn_available,
)
from quire.backends.torch.models.moe import ExpertLinears, MoEExperts
from quire.backends.torch.swap import replace_modules


def _packed(weight: torch.Tensor) -> PackedLinear:
    linear = nn.Linear(weight.shape[1], weight.shape[0], bias=False, device="meta")
    linear.weight = nn.Parameter(weight, requires_grad=False)
    return PackedLinear(linear)


class CpuMoEExperts(ExpertLinears):
    @classmethod
    def packed_from(cls, module: MoEExperts) -> ExpertLinears:
        if module.act == "silu" and bf16_gemm_available(module.w13.dtype):
            return cls.from_linears(module, [VnniLinear(w.detach(), True) for w in module.w13],
                                    [VnniLinear(w.detach(), False) for w in module.w2])
        return cls.from_linears(module, [_packed(w.detach()) for w in module.w13],
                                [_packed(w.detach()) for w in module.w2])

    @property
    def vnni(self) -> bool:
        """Experts in quire's GEMM layout (the up projection gated)."""
        return isinstance(self.up[0], VnniLinear)

    def forward(self, x: torch.Tensor, router_logits: torch.Tensor) -> torch.Tensor:
        if self.act == "silu" and native.available():
            return native.module().moe_experts(
                x.contiguous(), router_logits, self.top_k, self.renormalize,
                [m.packed for m in self.up], [m.packed for m in self.down],
                PAD_RULE, self.vnni)
        return super().forward(x, router_logits)

    def activate(self, h: torch.Tensor) -> torch.Tensor:
        if self.vnni:  # the gated up projection has applied it
            return h
        if self.act == "silu" and native.available():  # one pass
            return native.module().silu_mul(h)
        return super().activate(h)


def pack_experts(model: nn.Module) -> int:
    """Swap every MoEExperts for CpuMoEExperts (when oneDNN runs its dtype)."""
    def convert(module: nn.Module) -> nn.Module | None:
        if type(module) is MoEExperts and onednn_available(module.w13.dtype):
            return CpuMoEExperts.packed_from(module)
        return None

    return replace_modules(model, convert)
