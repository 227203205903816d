"""Weight-only quantized GEMM in Triton (W4A16 / W8A16; shared by the cuda and rocm backends):
y = x W^T with W held in quire.models.quant.PackedWeight's layout — GGUF blocks, GPTQ, AWQ
and int8 alike — dequantized inside the K loop, never in memory.

Layout read (N output rows, K inputs, K a multiple of 32): 4-bit values as bytes [N, K/2],
byte j of each 32-input group holding input j in its low nibble and input j + 16 in its
high nibble; 8-bit values as signed bytes [N, K]; a scale and an optional min per (row,
group of GS inputs), GS 32 or 16, float16 or float32: w = scale * q + min.

Program (m, n) owns a BLOCK_M x BLOCK_N tile of y and walks K 32 inputs at a time as two
halves of 16 (the two nibbles of 16 bytes for 4-bit; two runs of 16 bytes for 8-bit), each
half dequantized in fp32 with its group's scale and min, cast to x's dtype and fed to
tl.dot with fp32 accumulation.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from quire.backends.torch.quantization import QuantLinear, dequantize_rows
from quire.backends.triton.config import interpreting
from quire.core.sizing import cdiv


@triton.jit
def _dequant_half(q, s_ptr, m_ptr, cols, group, N, G, HAS_MINS: tl.constexpr):
    """q [BLOCK_N, 16] integers of one group -> fp32 weights (scale, min per row)."""
    ok = cols < N
    s = tl.load(s_ptr + cols.to(tl.int64) * G + group, mask=ok, other=0.0).to(tl.float32)
    w = q.to(tl.float32) * s[:, None]
    if HAS_MINS:
        mn = tl.load(m_ptr + cols.to(tl.int64) * G + group, mask=ok, other=0.0)
        w += mn.to(tl.float32)[:, None]
    return w


@triton.jit
def _quant_gemm_kernel(x_ptr, qw_ptr, scales_ptr, mins_ptr, y_ptr, M, N, K, stride_xm,
                       stride_ym, BITS: tl.constexpr, GS: tl.constexpr,
                       HAS_MINS: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
                       UPCAST_DOT: tl.constexpr):
    pid_m = tl.program_id(0)
    pid_n = tl.program_id(1)
    rows = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    cols = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    j = tl.arange(0, 16)
    row_ok = rows < M
    col_ok = cols < N
    G = K // GS
    x_row = x_ptr + rows.to(tl.int64)[:, None] * stride_xm
    row_bytes = K * BITS // 8
    q_row = qw_ptr + cols.to(tl.int64)[:, None] * row_bytes
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for k0 in range(0, K, 32):
        x_lo = tl.load(x_row + k0 + j[None, :], mask=row_ok[:, None], other=0.0)
        x_hi = tl.load(x_row + k0 + 16 + j[None, :], mask=row_ok[:, None], other=0.0)
        if BITS == 4:
            b = tl.load(q_row + k0 // 2 + j[None, :], mask=col_ok[:, None], other=0)
            q_lo = (b & 0xF).to(tl.int32)
            q_hi = (b >> 4).to(tl.int32)
        else:
            q_lo = tl.load(q_row + k0 + j[None, :], mask=col_ok[:, None], other=0).to(tl.int32)
            q_hi = tl.load(q_row + k0 + 16 + j[None, :], mask=col_ok[:, None],
                           other=0).to(tl.int32)
        w_lo = _dequant_half(q_lo, scales_ptr, mins_ptr, cols, k0 // GS, N, G, HAS_MINS)
        w_hi = _dequant_half(q_hi, scales_ptr, mins_ptr, cols, (k0 + 16) // GS, N, G,
                             HAS_MINS)
        if UPCAST_DOT:
            acc += tl.dot(x_lo.to(tl.float32), tl.trans(w_lo), input_precision="ieee")
            acc += tl.dot(x_hi.to(tl.float32), tl.trans(w_hi), input_precision="ieee")
        else:
            dt = x_lo.dtype
            acc += tl.dot(x_lo, tl.trans(w_lo.to(dt)), input_precision="ieee")
            acc += tl.dot(x_hi, tl.trans(w_hi.to(dt)), input_precision="ieee")
    out = y_ptr + rows.to(tl.int64)[:, None] * stride_ym + cols[None, :]
    tl.store(out, acc.to(y_ptr.dtype.element_ty), mask=row_ok[:, None] & col_ok[None, :])


def quant_gemm(x: torch.Tensor, qweight: torch.Tensor, scales: torch.Tensor,
               mins: torch.Tensor, bits: int, group_size: int, block_m: int = 16,
               block_n: int = 64) -> torch.Tensor:
    """x [M, K] @ W^T -> [M, N] in x's dtype, W packed as the module docstring says."""
    if bits not in (4, 8) or group_size not in (16, 32) or (bits == 4 and group_size != 32):
        raise ValueError(f"no Triton kernel for {bits}-bit weights in groups of {group_size}")
    m, k = x.shape
    n = scales.shape[0]
    if k % 32:
        raise ValueError(f"packed weights need K a multiple of 32, got {k}")
    x = x if x.stride(1) == 1 else x.contiguous()
    y = torch.empty(m, n, dtype=x.dtype, device=x.device)
    has_mins = mins.numel() > 0
    grid = (cdiv(m, block_m), cdiv(n, block_n))
    _quant_gemm_kernel[grid](
        x, qweight.view(torch.uint8) if bits == 4 else qweight.view(torch.int8),
        scales.contiguous(), mins.contiguous() if has_mins else scales, y, m, n, k,
        x.stride(0), y.stride(0), BITS=bits, GS=group_size, HAS_MINS=has_mins,
        BLOCK_M=block_m, BLOCK_N=block_n,
        UPCAST_DOT=interpreting() or x.dtype == torch.float32)
    return y


class TritonQuantKernel:
    """The QuantKernel of the cuda / rocm backends (and triton-interpret)."""

    formats = frozenset({"Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q8_0", "Q4_K", "Q5_K", "Q6_K",
                         "int8", "gptq", "awq"})

    def matmul(self, x: torch.Tensor, layer: QuantLinear) -> torch.Tensor:
        return quant_gemm(x, layer.qweight, layer.scales, layer.mins, layer.bits,
                          layer.group_size)

    def dequantize(self, layer: QuantLinear) -> torch.Tensor:
        return dequantize_rows(layer, torch.arange(layer.out_features,
                                                   device=layer.qweight.device))
