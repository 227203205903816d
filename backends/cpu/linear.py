"""Linear layers with weights prepacked once for oneDNN (the blocked layout its matmul
kernels read), instead of torch's F.linear, whose sgemm re-packs the whole weight on every
call. That re-packing dominates decode steps, where a few rows meet a large weight: on the
dev box (2-core Zen 4) the 512 x 32000 lm_head at 32 rows ran 62 -> 184 GFLOP/s in fp32 and
256 -> 362 in bf16 (benchmarks/RESULTS.md).

oneDNN builds (~1 ms) and caches one primitive per input shape, so row counts above
EXACT_ROWS (prefill chunks of any length) are padded up to a multiple of ROW_BUCKET: a
bounded set of shapes for a long-running server, at most 1/4 extra rows of work. Decode
batches (<= EXACT_ROWS rows) run unpadded.

QUIRE_CPU_ONEDNN=0 keeps plain nn.Linear; so does a torch built without oneDNN.

bf16 layers on a CPU with AVX-512 BF16 (and the native kernels built) use quire's own GEMM
instead (VnniLinear, backends/cpu/gemm_csrc.py): it streams each panel of weights once for
all of a decode step's rows; on the dev box 1.3-1.8x faster than oneDNN below ~32 rows,
level to 8% slower from 64 rows up (benchmarks/RESULTS.md). QUIRE_CPU_BF16_GEMM=0 keeps oneDNN's
layout (for A/B runs).
"""

from __future__ import annotations

import functools
import logging
import os

import torch
from torch import nn

from quire.backends.cpu import native
from quire.backends.torch.swap import replace_modules
from quire.core.sizing import cdiv

logger = logging.getLogger(__name__)

EXACT_ROWS = 64
ROW_BUCKET = 16
LONG_ROWS, LONG_BUCKET = 512, 64  # past LONG_ROWS, padded to multiples of LONG_BUCKET
PAD_RULE = [EXACT_ROWS, ROW_BUCKET, LONG_ROWS, LONG_BUCKET]  # for the native MoE (moe_csrc.py)


def padded_rows(rows: int) -> int:
    """rows itself up to EXACT_ROWS; above, the next multiple of ROW_BUCKET (of 64 past
    512 rows)."""
    if rows <= EXACT_ROWS:
        return rows
    step = ROW_BUCKET if rows <= LONG_ROWS else LONG_BUCKET
    return cdiv(rows, step) * step


def _linear(x: torch.Tensor, packed: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    return torch.ops.mkldnn._linear_pointwise(x, packed, bias, "none", [], "")


class PackedLinear(nn.Module):
    """y = x W^T + b with W held in oneDNN's packed layout. x: [T, in] -> [T, out]."""

    def __init__(self, linear: nn.Linear) -> None:
        super().__init__()
        self.in_features, self.out_features = linear.in_features, linear.out_features
        with torch.no_grad():
            self.packed = torch.ops.mkldnn._reorder_linear_weight(linear.weight.detach(), None)
        self.bias = None if linear.bias is None else linear.bias.detach()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._apply_packed(x, self.packed, self.bias)

    @staticmethod
    def _apply_packed(x: torch.Tensor, packed: torch.Tensor, bias: torch.Tensor | None
                      ) -> torch.Tensor:
        """x [T, in] through a packed weight, rows padded as padded_rows says."""
        rows = x.shape[0]
        padded = padded_rows(rows)
        if padded != rows:
            x = torch.cat([x, x.new_zeros(padded - rows, x.shape[1])])
        out = _linear(x, packed, bias)
        return out if padded == rows else out[:rows]

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, packed"


def bf16_gemm_available(dtype: torch.dtype) -> bool:
    """Whether quire's AVX-512 BF16 GEMM runs dtype here (bf16 only)."""
    return (dtype == torch.bfloat16 and os.environ.get("QUIRE_CPU_BF16_GEMM", "1") != "0"
            and native.available() and native.module().bf16_gemm_supported())


class VnniLinear(nn.Module):
    """y = x W^T (+ b) for bf16 W packed for quire's AVX-512 BF16 GEMM (gemm_csrc.py).
    gated: W is gate | up and the layer returns silu(gate) * up (the MoE experts' form)."""

    def __init__(self, weight: torch.Tensor, gated: bool = False,
                 bias: torch.Tensor | None = None) -> None:
        super().__init__()
        self.in_features = weight.shape[1]
        self.out_features = weight.shape[0] // (2 if gated else 1)
        self.gated = gated
        with torch.no_grad():
            self.packed = native.module().vnni_pack(weight.detach().contiguous(), gated)
        self.bias = None if bias is None else bias.detach()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        rows = x.reshape(-1, x.shape[-1])
        out = native.module().vnni_linear(rows.contiguous(), self.packed, self.gated)
        if out.shape[1] != self.out_features:
            out = out[:, :self.out_features]
        if self.bias is not None:
            out = out + self.bias
        return out.reshape(*x.shape[:-1], self.out_features)

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, "
                f"bf16 GEMM{', gated' if self.gated else ''}")


@functools.cache
def onednn_available(dtype: torch.dtype) -> bool:
    """Whether the packed path runs here and agrees with F.linear (checked once per dtype)."""
    if os.environ.get("QUIRE_CPU_ONEDNN", "1") == "0" or not torch.backends.mkldnn.is_available():
        return False
    try:
        probe = nn.Linear(32, 16).to(dtype)
        x = torch.randn(3, 32).to(dtype)
        with torch.no_grad():
            ok = torch.allclose(PackedLinear(probe)(x).float(), probe(x).float(),
                                atol=5e-2, rtol=5e-2)
    except (RuntimeError, AttributeError) as exc:  # an op missing from this torch build
        logger.warning("oneDNN packed linear unavailable (%s); using F.linear", exc)
        return False
    return ok


def pack_linears(model: nn.Module) -> int:
    """Swap every nn.Linear of the model for a VnniLinear (bf16 where quire's GEMM runs) or
    a PackedLinear (when oneDNN runs its dtype); returns how many were swapped."""
    def convert(module: nn.Module) -> nn.Module | None:
        if not isinstance(module, nn.Linear):
            return None
        if bf16_gemm_available(module.weight.dtype):
            return VnniLinear(module.weight, bias=module.bias)
        if onednn_available(module.weight.dtype):
            return PackedLinear(module)
        return None

    return replace_modules(model, convert)


# The output head may also hold an fp32 copy, run from FP32_ROWS rows up: on the dev box
# oneDNN's fp32 GEMM beats its bf16 one on the 512 x 32000 head at >= 32 rows (64 rows: 8.6
# vs 11.4 ms; benchmarks/MODELS.md) while bf16 wins below. Whether it does is measured on
# this CPU at load (an AMX machine's bf16 path would win), and only a copy of at most
# FP32_COPY_MAX_BYTES is made.
FP32_ROWS = 32
FP32_COPY_MAX_BYTES = 256 << 20


def _faster_in_fp32(bf16_call, packed32: torch.Tensor, in_features: int,
                    dtype: torch.dtype) -> bool:
    """Min of 3 interleaved calls at 2 * FP32_ROWS rows, each path (bf16_call: x -> y)."""
    import time

    x = torch.randn(2 * FP32_ROWS, in_features)
    xl = x.to(dtype)
    best = {False: float("inf"), True: float("inf")}
    with torch.no_grad():
        for _ in range(4):  # the first round warms both primitives up
            for fp32 in (False, True):
                start = time.perf_counter()
                _linear(x, packed32, None) if fp32 else bf16_call(xl)
                best[fp32] = min(best[fp32], time.perf_counter() - start)
    return best[True] < best[False]


class PackedHead(PackedLinear):
    """The output head: PackedLinear (or, for bf16 where quire's GEMM runs, a VnniLinear:
    1.4x oneDNN at 1-7 rows on the bf16 heads measured), plus an fp32 copy for FP32_ROWS
    rows and more where that measured faster here. Returns x's dtype either way."""

    def __init__(self, linear: nn.Linear) -> None:
        weight = linear.weight.detach()
        if bf16_gemm_available(weight.dtype):  # no oneDNN bf16 copy then
            nn.Module.__init__(self)
            self.in_features, self.out_features = linear.in_features, linear.out_features
            self.vnni = VnniLinear(weight, bias=linear.bias)
            self.packed, self.bias = None, self.vnni.bias
        else:
            super().__init__(linear)
            self.vnni = None
        self.packed32 = None
        if weight.dtype != torch.float32 and weight.numel() * 4 <= FP32_COPY_MAX_BYTES:
            with torch.no_grad():
                packed32 = torch.ops.mkldnn._reorder_linear_weight(weight.float(), None)
            if _faster_in_fp32(self._forward_low, packed32, self.in_features, weight.dtype):
                self.packed32 = packed32
                self.bias32 = None if self.bias is None else self.bias.float()

    def _forward_low(self, x: torch.Tensor) -> torch.Tensor:
        if self.vnni is not None:
            return self.vnni(x)
        return super().forward(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.packed32 is None or x.shape[0] < FP32_ROWS:
            return self._forward_low(x)
        return self._apply_packed(x.float(), self.packed32, self.bias32).to(x.dtype)


def pack_head(model: nn.Module) -> bool:
    """Swap the model's output head (model.lm_head, or the linear a tensor-parallel wrapper
    holds as .inner) for a PackedHead; False where there is none or oneDNN can't run it."""
    owner, name = model, "lm_head"
    head = getattr(model, "lm_head", None)
    if head is not None and not isinstance(head, nn.Linear):
        owner, name, head = head, "inner", getattr(head, "inner", None)
    if not isinstance(head, nn.Linear) or not (onednn_available(head.weight.dtype)
                                                or bf16_gemm_available(head.weight.dtype)):
        return False
    setattr(owner, name, PackedHead(head))
    return True
