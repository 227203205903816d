"""Weight-only quantized tensors in one framework-free layout both families read, and the
exact repacking of GGUF's block formats into it.

A PackedWeight holds a [N, K] matrix (N output rows, K inputs) in groups of group_size
consecutive inputs of one row:

    w[n, k] = scales[n, g] * q[n, k] + (mins[n, g] if mins is not None else 0),  g = k // group

bits 4: q in 0..15, qweight [N, K // 2] uint8; within each group of 32 inputs (16 bytes),
    byte j holds input j in its low nibble and input j + 16 in its high nibble (GGUF's own
    order, so Q4_0 / Q4_1 blocks are kept as they are);
bits 8: q a signed byte, qweight [N, K] int8.
scales and mins are float16 where the format stores float16 (exactly), else float32.

GGUF formats map exactly: Q4_0 (min = -8 d), Q4_1, Q8_0, Q5_0 / Q5_1 (5-bit values held in
bytes), and the K-quants of Q4_K_M / Q5_K_M files: Q4_K (4-bit, group 32, scale d * sc and
min -dmin * m in float32), Q5_K (held in bytes, group 32) and Q6_K (held in bytes, group 16,
scale d * sc). Other types have no repacking: their loaders dequantize them.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

# ggml type ids (gguf.GGMLQuantizationType) of the formats repacked here.
Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, Q4_K, Q5_K, Q6_K = 2, 3, 6, 7, 8, 12, 13, 14
NAMES = {Q4_0: "Q4_0", Q4_1: "Q4_1", Q5_0: "Q5_0", Q5_1: "Q5_1", Q8_0: "Q8_0", Q4_K: "Q4_K",
         Q5_K: "Q5_K", Q6_K: "Q6_K"}
_BLOCK_BYTES = {Q4_0: 18, Q4_1: 20, Q5_0: 22, Q5_1: 24, Q8_0: 34}
_K_BLOCK_BYTES = {Q4_K: 144, Q5_K: 176, Q6_K: 210}
QK_K = 256  # inputs per K-quant super-block
QK = 32  # inputs per GGUF block of these formats


@dataclass(frozen=True, slots=True)
class PackedWeight:
    bits: int
    group_size: int
    qweight: np.ndarray
    scales: np.ndarray
    mins: np.ndarray | None
    shape: tuple[int, int]  # (N, K)
    source: str  # the checkpoint's format name, for logs ("Q4_1", ...)
    # Inputs stored out of order (GPTQ's act-order): stored column j is input perm[j], so
    # y = x[:, perm] @ stored^T; None when they are in order.
    perm: np.ndarray | None = None

    @property
    def nbytes(self) -> int:
        return self.qweight.nbytes + self.scales.nbytes + \
            (self.mins.nbytes if self.mins is not None else 0)

    def rows(self, index: np.ndarray) -> PackedWeight:
        """The same weight with its rows taken in index order."""
        return PackedWeight(self.bits, self.group_size, self.qweight[index], self.scales[index],
                            None if self.mins is None else self.mins[index],
                            (len(index), self.shape[1]), self.source, self.perm)

    def dequantize(self, stored_order: bool = False) -> np.ndarray:
        """The float32 [N, K] matrix (the reference every kernel is checked against); with
        stored_order, its inputs in perm's order (what the kernels multiply)."""
        n, k = self.shape
        if self.bits == 4:
            b = self.qweight.reshape(n, k // 32, 16)
            q = np.concatenate([b & 0xF, b >> 4], axis=2).reshape(n, k).astype(np.float32)
        else:
            q = self.qweight.astype(np.float32)
        g = self.group_size
        w = q.reshape(n, k // g, g) * self.scales.astype(np.float32)[:, :, None]
        if self.mins is not None:
            w += self.mins.astype(np.float32)[:, :, None]
        w = w.reshape(n, k)
        if self.perm is None or stored_order:
            return w
        dense = np.empty_like(w)
        dense[:, self.perm] = w
        return dense


@dataclass(frozen=True, slots=True)
class PackedExperts:
    """A mixture-of-experts stack [E, N, K] kept quantized: one PackedWeight per expert
    (GGUF's 3-D expert tensors; HF's per-expert GPTQ / AWQ layers, once fused)."""

    experts: tuple[PackedWeight, ...]

    @property
    def nbytes(self) -> int:
        return sum(e.nbytes for e in self.experts)

    @property
    def source(self) -> str:
        return "+".join(sorted({e.source for e in self.experts}))

    @property
    def shape(self) -> tuple[int, int, int]:
        return (len(self.experts), *self.experts[0].shape)

    def dequantize(self) -> np.ndarray:
        """The float32 [E, N, K] stack."""
        return np.stack([e.dequantize() for e in self.experts])


def experts_from_gguf(data: np.ndarray, ggml_type: int, shape: tuple[int, int, int]
                      ) -> PackedExperts | None:
    """A GGUF 3-D expert tensor's raw blocks ([E, N, row bytes]) of logical shape (E, N, K);
    None for a type with no repacking here."""
    e, n, k = shape
    parts = [from_gguf(np.asarray(data)[i], ggml_type, (n, k)) for i in range(e)]
    return None if any(p is None for p in parts) else PackedExperts(tuple(parts))  # type: ignore[arg-type]


def concat_rows(parts: list[PackedWeight]) -> PackedWeight:
    """Stack weights along N (fused q/k/v, gate/up). They must share bits, group size and
    scale dtype; ValueError otherwise (the caller then dequantizes)."""
    first = parts[0]
    for p in parts[1:]:
        if (p.bits, p.group_size, p.scales.dtype, p.mins is None) != \
                (first.bits, first.group_size, first.scales.dtype, first.mins is None) or \
                p.shape[1] != first.shape[1] or not _same_perm(p.perm, first.perm):
            raise ValueError(f"cannot fuse {first.source} and {p.source} weights")
    mins = None if first.mins is None else np.concatenate([p.mins for p in parts])  # type: ignore[misc]
    return PackedWeight(first.bits, first.group_size,
                        np.concatenate([p.qweight for p in parts]),
                        np.concatenate([p.scales for p in parts]), mins,
                        (sum(p.shape[0] for p in parts), first.shape[1]),
                        "+".join(sorted({p.source for p in parts})), first.perm)


def _same_perm(a: np.ndarray | None, b: np.ndarray | None) -> bool:
    return (a is None and b is None) or (a is not None and b is not None and
                                         np.array_equal(a, b))


def from_gguf(data: np.ndarray, ggml_type: int, shape: tuple[int, int]) -> PackedWeight | None:
    """Repack a GGUF tensor's raw blocks (uint8, any shape) of logical shape (N, K); None for
    a type with no repacking here."""
    if ggml_type in _K_BLOCK_BYTES:
        return _from_k_quant(data, ggml_type, shape)
    if ggml_type not in _BLOCK_BYTES:
        return None
    n, k = shape
    if k % QK:
        return None
    blocks = np.ascontiguousarray(data, dtype=np.uint8).reshape(n, k // QK,
                                                               _BLOCK_BYTES[ggml_type])
    d = blocks[:, :, 0:2].copy().view(np.float16)[:, :, 0]
    name = NAMES[ggml_type]
    if ggml_type == Q8_0:
        q = blocks[:, :, 2:].copy().view(np.int8).reshape(n, k)
        return PackedWeight(8, QK, q, d, None, (n, k), name)
    if ggml_type in (Q4_0, Q4_1):
        if ggml_type == Q4_1:
            m = blocks[:, :, 2:4].copy().view(np.float16)[:, :, 0]
        else:  # -8 d: exact in float16 unless it overflows
            m32 = d.astype(np.float32) * -8
            m = m32.astype(np.float16) if np.abs(m32).max(initial=0) < 6e4 else m32
            d = d if m.dtype == np.float16 else d.astype(np.float32)
        qs = blocks[:, :, 4:] if ggml_type == Q4_1 else blocks[:, :, 2:]
        return PackedWeight(4, QK, np.ascontiguousarray(qs).reshape(n, k // 2), d, m, (n, k),
                            name)
    # Q5_0 / Q5_1: 4 low bits as in Q4, the fifth bits in a little-endian uint32 (bit j for
    # input j); values held in bytes.
    off = 4 if ggml_type == Q5_1 else 2
    qh = blocks[:, :, off : off + 4].copy().view(np.uint32)[:, :, 0]
    qs = blocks[:, :, off + 4 :]
    low = np.concatenate([qs & 0xF, qs >> 4], axis=2)  # [n, blocks, 32]
    high = ((qh[:, :, None] >> np.arange(32, dtype=np.uint32)) & 1).astype(np.uint8) << 4
    q5 = (low | high).astype(np.int16)
    if ggml_type == Q5_0:
        return PackedWeight(8, QK, (q5 - 16).astype(np.int8).reshape(n, k), d, None, (n, k),
                            name)
    m = blocks[:, :, 2:4].copy().view(np.float16)[:, :, 0]
    return PackedWeight(8, QK, q5.astype(np.int8).reshape(n, k), d, m, (n, k), name)


def pack_nibbles(q: np.ndarray) -> np.ndarray:
    """q [..., 32] values 0..15 -> [..., 16] bytes in this module's 4-bit order."""
    return (q[..., :16] | (q[..., 16:] << 4)).astype(np.uint8)


def _k_scales(s12: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The eight 6-bit scales and mins packed in a K-quant block's 12 bytes: [..., 8] each."""
    s = s12.astype(np.uint8)
    sc = np.empty(s.shape[:-1] + (8,), np.uint8)
    mn = np.empty_like(sc)
    sc[..., :4] = s[..., 0:4] & 63
    mn[..., :4] = s[..., 4:8] & 63
    sc[..., 4:] = (s[..., 8:12] & 0xF) | ((s[..., 0:4] >> 6) << 4)
    mn[..., 4:] = (s[..., 8:12] >> 4) | ((s[..., 4:8] >> 6) << 4)
    return sc, mn


def _from_k_quant(data: np.ndarray, ggml_type: int, shape: tuple[int, int]
                  ) -> PackedWeight | None:
    n, k = shape
    if k % QK_K:
        return None
    b = np.ascontiguousarray(data, dtype=np.uint8).reshape(n, k // QK_K,
                                                          _K_BLOCK_BYTES[ggml_type])
    name = NAMES[ggml_type]
    if ggml_type == Q6_K:
        ql, qh = b[..., 0:128].reshape(n, -1, 2, 64), b[..., 128:192].reshape(n, -1, 2, 32)
        sc = b[..., 192:208].copy().view(np.int8).astype(np.float32)  # [n, blocks, 16]
        d = b[..., 208:210].copy().view(np.float16).astype(np.float32)  # [n, blocks, 1]
        parts = [(ql[..., :32] & 0xF) | ((qh & 3) << 4),
                 (ql[..., 32:] & 0xF) | (((qh >> 2) & 3) << 4),
                 (ql[..., :32] >> 4) | (((qh >> 4) & 3) << 4),
                 (ql[..., 32:] >> 4) | (((qh >> 6) & 3) << 4)]
        q = np.stack(parts, axis=3).astype(np.int16) - 32  # [n, blocks, half, 4, 32]
        return PackedWeight(8, 16, q.astype(np.int8).reshape(n, k),
                            (d * sc).reshape(n, k // 16), None, (n, k), name)
    d = b[..., 0:2].copy().view(np.float16).astype(np.float32)
    dmin = b[..., 2:4].copy().view(np.float16).astype(np.float32)
    sc, mn = _k_scales(b[..., 4:16])
    scales = (d * sc).reshape(n, k // 32)
    mins = (-dmin * mn).reshape(n, k // 32)
    if ggml_type == Q4_K:
        qs = b[..., 16:144].reshape(n, -1, 4, 32)  # 4 chunks of 64 inputs
        q = np.stack([qs & 0xF, qs >> 4], axis=3).reshape(n, k // 32, 32)
        return PackedWeight(4, 32, pack_nibbles(q).reshape(n, k // 2), scales, mins, (n, k),
                            name)
    qh = b[..., 16:48]  # [n, blocks, 32]: bit i is sub-block i's fifth bit
    qs = b[..., 48:176].reshape(n, -1, 4, 32)
    low = np.stack([qs & 0xF, qs >> 4], axis=3).reshape(n, -1, 8, 32)
    high = ((qh[:, :, None, :] >> np.arange(8, dtype=np.uint8)[:, None]) & 1) << 4
    q = (low | high).astype(np.int8).reshape(n, k)
    return PackedWeight(8, 32, q, scales, mins, (n, k), name)


def quantize_int8(w: np.ndarray, group_size: int = 32) -> PackedWeight:
    """Symmetric 8-bit weight-only quantization of a dense [N, K] matrix (K a multiple of
    group_size): per group a float16 scale max|w| / 127 and values round(w / scale)."""
    n, k = w.shape
    g = np.asarray(w, np.float32).reshape(n, k // group_size, group_size)
    scale = (np.abs(g).max(axis=2) / 127).astype(np.float16)
    safe = np.where(scale == 0, 1, scale).astype(np.float32)
    q = np.clip(np.rint(g / safe[:, :, None]), -127, 127).astype(np.int8)
    return PackedWeight(8, group_size, q.reshape(n, k), scale, None, (n, k), "int8")
