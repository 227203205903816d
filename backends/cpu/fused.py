"""The cpu backend's fused elementwise layers: RMSNorm, SiLU-and-multiply and rotary
embedding each in one native pass (backends/cpu/native.py) instead of 2-10 small torch ops
whose dispatch cost dominates at decode batch sizes. Swapped into a loaded model by
fuse_elementwise(); shapes the kernels don't take fall back to the torch modules."""

from __future__ import annotations

import torch
from torch import nn

from quire.backends.cpu import native
from quire.backends.torch.models.llama import RMSNorm, SiluAndMul
from quire.backends.torch.rope import ApplyRotary
from quire.backends.torch.swap import replace_modules


class NativeRMSNorm(RMSNorm):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() == 2 and x.stride(1) == 1 and x.dtype == self.weight.dtype:
            return native.module().rms_norm(x, self.weight, self.eps)
        return super().forward(x)


class NativeSiluAndMul(SiluAndMul):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() == 2 and x.is_contiguous():
            return native.module().silu_mul(x)
        return super().forward(x)


class NativeApplyRotary(ApplyRotary):
    """Rotates q and k in place (they are views of the qkv projection's output)."""

    def forward(self, q: torch.Tensor, k: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor
                ) -> tuple[torch.Tensor, torch.Tensor]:
        if q.stride(-1) == 1 and k.stride(-1) == 1 and cos.dtype == torch.float32 and \
                cos.shape[-1] == q.shape[-1]:
            native.module().rope_inplace(q, k, cos.contiguous(), sin.contiguous())
            return q, k
        return super().forward(q, k, cos, sin)


def fuse_elementwise(model: nn.Module) -> int:
    """Swap the model's RMSNorm / SiluAndMul / ApplyRotary modules for the native ones when
    the native kernels are available; returns how many were swapped."""
    if not native.available():
        return 0

    def convert(module: nn.Module) -> nn.Module | None:
        if type(module) is RMSNorm:
            fused = NativeRMSNorm(module.weight.shape[0], module.eps)
            fused.weight = module.weight
            return fused
        if type(module) is SiluAndMul:
            return NativeSiluAndMul()
        if type(module) is ApplyRotary:
            return NativeApplyRotary()
        return None

    return replace_modules(model, convert)
