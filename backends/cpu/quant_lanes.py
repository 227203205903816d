"""Packed weights in the "lanes" layout (lanes_csrc.py): 16 outputs across the vector lanes,
unpacked once per tile and multiplied into every row of a call with vdpbf16ps.

repack() turns a QuantLinear's checkpoint layout (quire.models.quant.PackedWeight's: 4-bit
nibbles in GGUF's order, or signed bytes) into this one, in place and at the same size
(scales and mins reordered, N padded to whole tiles); dequantize() reads rows back (embedding
lookups), dequantize_t() the whole weight transposed (QuantKernel.dequantize). Only
where the native build has AVX-512 BF16 (available()); elsewhere the rows kernel
(quant_csrc.py) serves every layer.
"""

from __future__ import annotations

import os

import numpy as np
import torch

from quire.backends.cpu import native
from quire.backends.torch.quantization import QuantLinear

LAYOUT = "lanes16"
TILE = 16


def supported(layer: QuantLinear) -> bool:
    """Whether this layer's format fits the layout: 4-bit with groups a multiple of 8 inputs,
    or 8-bit with even groups; scales float16 or float32."""
    step = 8 if layer.bits == 4 else 2
    return (layer.bits in (4, 8) and layer.group_size % step == 0
            and layer.in_features % layer.group_size == 0
            and layer.scales.dtype in (torch.float16, torch.float32))


def _values(layer: QuantLinear) -> np.ndarray:
    """The stored integers, [N, K] (uint8 0..15 for 4-bit, int8 for 8-bit)."""
    n, k = layer.out_features, layer.in_features
    q = layer.qweight.numpy()
    if layer.bits == 4:
        b = q.reshape(n, k // 32, 16)
        return np.concatenate([b & 0xF, b >> 4], axis=2).reshape(n, k)
    return q.view(np.int8).reshape(n, k)


def _per_tile(a: torch.Tensor, tiles: int) -> torch.Tensor:
    """[N, G] -> [T, G, 16], padded with zeros."""
    n, g = a.shape
    out = torch.zeros(tiles * TILE, g, dtype=a.dtype)
    out[:n] = a
    return out.view(tiles, TILE, g).transpose(1, 2).contiguous()


def repack(layer: QuantLinear) -> None:
    n, k = layer.out_features, layer.in_features
    tiles = -(-n // TILE)
    q = np.zeros((tiles * TILE, k), dtype=np.uint8 if layer.bits == 4 else np.int8)
    q[:n] = _values(layer)
    if layer.bits == 4:
        # [T, o, b, v, p] -> [T, b, o, p, v]: word (o, p) of load b holds v = 0..3
        v = q.reshape(tiles, TILE, k // 8, 4, 2).transpose(0, 2, 1, 4, 3).astype(np.uint16)
        words = v[..., 0] | (v[..., 1] << 4) | (v[..., 2] << 8) | (v[..., 3] << 12)
        packed = np.ascontiguousarray(words.reshape(tiles, k // 8, 32)).view(np.uint8)
    else:
        packed = np.ascontiguousarray(
            q.reshape(tiles, TILE, k // 2, 2).transpose(0, 2, 1, 3)).view(np.uint8)
    layer.qweight = torch.from_numpy(packed.reshape(tiles, -1))
    layer.scales = _per_tile(layer.scales, tiles)
    if layer.mins.numel():
        layer.mins = _per_tile(layer.mins, tiles)
    layer.layout = LAYOUT
    # The call with its arguments bound once: a decode step makes ~4 of these per layer.
    fn, qw, sc, mn = native.module().lanes_linear, layer.qweight, layer.scales, layer.mins
    bits, group, n_out = layer.bits, layer.group_size, layer.out_features
    layer.lanes_call = lambda x: fn(x, qw, sc, mn, bits, group, n_out)


def available() -> bool:
    """The lanes kernel runs here (native kernels built, AVX-512 BF16) and is not switched
    off (QUIRE_CPU_QUANT_LANES=0 keeps every layer on the rows kernel)."""
    return (os.environ.get("QUIRE_CPU_QUANT_LANES", "1") != "0" and native.available()
            and native.module().lanes_supported())


def dequantize(layer: QuantLinear, ids: torch.Tensor) -> torch.Tensor:
    """Rows ids of the weight as float32 [len(ids), K], read back from the lanes layout."""
    return native.module().lanes_dequantize(layer.qweight, layer.scales, layer.mins,
                                            layer.bits, layer.group_size,
                                            ids.to(torch.int64).contiguous())


def dequantize_t(layer: QuantLinear) -> torch.Tensor:
    """The weight transposed, float32 [K, N] (a view of [K, 16 * tiles]):
    x @ dequantize_t(layer) is the layer's reference product."""
    wt = native.module().lanes_dequantize_t(layer.qweight, layer.scales, layer.mins,
                                            layer.bits, layer.group_size)
    return wt[:, :layer.out_features]
