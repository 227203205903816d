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
"""

from __future__ import annotations

import functools
import logging
import os

import torch
from torch import nn

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


class PackedLinear(nn.Module):
    """y = x W^T + b with W held in oneDNN's packed layout. x: [T, in] -> [T, out]."""

    def __init__(self, linear: nn.Linear) -> None:
        super().__init__()
        self.in_features, self.out_features = linear.in_features, linear.out_features
        with torch.no_grad():
            self.packed = torch.ops.mkldnn._reorder_linear_weight(linear.weight.detach(), None)
        self.bias = None if linear.bias is None else linear.bias.detach()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        rows = x.shape[0]
        padded = padded_rows(rows)
        if padded != rows:
            x = torch.cat([x, x.new_zeros(padded - rows, x.shape[1])])
        out = torch.ops.mkldnn._linear_pointwise(x, self.packed, self.bias, "none", [], "")
        return out if padded == rows else out[:rows]

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, packed"


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
    """Swap every nn.Linear of the model for a PackedLinear (when available for its dtype);
    returns how many were swapped."""
    def convert(module: nn.Module) -> nn.Module | None:
        if isinstance(module, nn.Linear) and onednn_available(module.weight.dtype):
            return PackedLinear(module)
        return None

    return replace_modules(model, convert)
