"""GPTQ and AWQ checkpoints (an HF folder whose config.json has a ``quantization_config``):
their tensors regrouped into quire.models.quant.PackedWeight, and writers of both formats
(used by the tests to build quantized checkpoints from random models; no calibration is
needed for the formats to be exercised exactly).

The formats, as their specifications (AutoGPTQ / optimum, AutoAWQ) lay them out, for a
linear layer of K inputs and N outputs in groups of G inputs (G = K when group_size is -1):

GPTQ ("checkpoint_format" gptq, bits 4 or 8): ``qweight`` int32 [K * bits / 32, N], each
    word packing 32 / bits consecutive inputs, the first in the lowest bits; ``qzeros``
    int32 [K / G, N * bits / 32] packing consecutive outputs the same way, each stored as
    zero - 1; ``scales`` float16 [K / G, N]; ``g_idx`` int32 [K], the group of each input
    (k // G, or a permuted assignment with ``desc_act``, GPTQ's act-order). Then
    w[n, k] = scales[g, n] * (q[k, n] - (qzeros[g, n] + 1)), g = g_idx[k].
AWQ ("version" gemm, 4 bits): ``qweight`` int32 [K, N / 8] packing eight outputs per word in
    the order 0, 2, 4, 6, 1, 3, 5, 7 (nibble i holds output 8c + ORDER[i]); ``qzeros`` int32
    [K / G, N / 8] packed the same way (zeros stored as they are); ``scales`` float16
    [K / G, N]. Then w[n, k] = scales[g, n] * (q[k, n] - zeros[g, n]), g = k // G.

Both become PackedWeight in groups of 32 (a group of G > 32 repeats its scale; the kernels
keep their one layout): scale s, min -s * z, in float16 where that is exact, else float32.
Act-order weights are stored with their inputs sorted by group (PackedWeight.perm), so each
group is contiguous again and a step gathers x's columns once.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Iterator
from typing import Any

import numpy as np

from quire.models.quant import QK, PackedWeight, pack_nibbles

logger = logging.getLogger(__name__)

AWQ_ORDER = np.array([0, 2, 4, 6, 1, 3, 5, 7])
METHODS = ("gptq", "awq")
_PARTS = {"gptq": ("qweight", "qzeros", "scales", "g_idx"), "awq": ("qweight", "qzeros", "scales")}


def quant_method(config: dict[str, Any]) -> dict[str, Any] | None:
    """The checkpoint's quantization_config when it is GPTQ or AWQ (checked), else None.
    ValueError for a variant quire cannot read, saying which."""
    qc = config.get("quantization_config")
    if not isinstance(qc, dict) or qc.get("quant_method") not in METHODS:
        return None
    method, bits = qc["quant_method"], int(qc.get("bits", 4))
    if method == "gptq" and bits not in (4, 8):
        raise ValueError(f"GPTQ with {bits} bits is not supported (4 or 8)")
    if method == "awq":
        if bits != 4:
            raise ValueError(f"AWQ with {bits} bits is not supported (4)")
        if str(qc.get("version", "gemm")).lower() != "gemm":
            raise ValueError(f"AWQ version {qc.get('version')!r} is not supported (gemm)")
        if not qc.get("zero_point", True):
            raise ValueError("AWQ without zero points is not supported")
    if method == "gptq" and qc.get("checkpoint_format", "gptq") != "gptq":
        raise ValueError(f"GPTQ checkpoint_format {qc.get('checkpoint_format')!r} is not "
                         "supported (gptq)")
    return qc


def merge_quantized(weights: Iterable[tuple[str, Any]], qc: dict[str, Any]
                    ) -> Iterator[tuple[str, Any]]:
    """The checkpoint's tensors with each quantized layer's parts (X.qweight, X.qzeros,
    X.scales[, X.g_idx]) replaced by one X.weight PackedWeight; other tensors pass through.
    A layer whose layout the kernels do not take (inputs or groups not multiples of 32)
    comes dense (float32, the format's own formula), said once in the log."""
    method = qc["quant_method"]
    parts_of = _PARTS[method]
    pending: dict[str, dict[str, np.ndarray]] = {}
    told = False
    for name, w in weights:
        prefix, _, leaf = name.rpartition(".")
        if leaf not in parts_of:
            yield name, w
            continue
        parts = pending.setdefault(prefix, {})
        parts[leaf] = np.asarray(w)
        if len(parts) == len(parts_of):
            del pending[prefix]
            try:
                yield prefix + ".weight", unpack(method, parts, qc)
            except ValueError as exc:
                if not told:
                    logger.info("%s layers dequantized at load where packing cannot keep "
                                "them (%s, e.g. %s)", method.upper(), exc, prefix)
                    told = True
                yield prefix + ".weight", dequantize_reference(method, parts, qc)
    if pending:
        prefix, parts = next(iter(pending.items()))
        missing = sorted(set(parts_of) - set(parts))
        raise ValueError(f"quantized layer {prefix!r} lacks {', '.join(missing)} in the "
                         "checkpoint")


def quantized_stream(config: dict[str, Any], weights: Iterable[tuple[str, Any]],
                     keep_quantized: bool) -> Iterable[tuple[str, Any]]:
    """An HF folder's tensor stream as a loader hands it on: for a GPTQ / AWQ checkpoint the
    quantized layers regrouped (merge_quantized), dequantized unless keep_quantized;
    others unchanged."""
    qc = quant_method(config)
    if qc is None:
        return weights
    merged = merge_quantized(weights, qc)
    return merged if keep_quantized else dequantized(merged, qc)


def dequantized(weights: Iterable[tuple[str, Any]], qc: dict[str, Any]
                ) -> Iterator[tuple[str, Any]]:
    """merge_quantized's stream with the PackedWeights made dense float32 arrays (a backend
    with no kernel for them, or --quantization none), said once in the log."""
    told = False
    for name, w in weights:
        if isinstance(w, PackedWeight):
            if not told:
                logger.info("%s weights are dequantized at load (no packed kernel in use)",
                            qc["quant_method"].upper())
                told = True
            w = w.dequantize()
        yield name, w


def check_requested(requested: str | None, qc: dict[str, Any] | None) -> None:
    """--quantization against the checkpoint: naming gptq / awq for a checkpoint of another
    kind (or another kind for a GPTQ / AWQ checkpoint) is an error that says what it holds."""
    have = None if qc is None else qc["quant_method"]
    if requested in (None, "none", have) or (requested in ("gguf",) and have is None):
        return
    if requested in METHODS or have is not None:
        raise ValueError(f"--quantization {requested} does not match the checkpoint, which is "
                         f"{have.upper() + '-quantized' if have else 'not GPTQ or AWQ'}; "
                         f"leave --quantization unset (the checkpoint decides) or use 'none'")


def unpack(method: str, parts: dict[str, np.ndarray], qc: dict[str, Any]) -> PackedWeight:
    bits = int(qc.get("bits", 4))
    if method == "gptq":
        q = _unpack_rows(parts["qweight"].view(np.uint32), bits)  # [K, N]
        zeros = _unpack_cols(parts["qzeros"].view(np.uint32), bits) + 1  # [groups, N]
        g_idx = parts["g_idx"].astype(np.int64)
    else:
        q = _unpack_awq(parts["qweight"].view(np.uint32))
        zeros = _unpack_awq(parts["qzeros"].view(np.uint32))
        g_idx = np.arange(q.shape[0]) // _group(qc, q.shape[0])
    return _packed(q, zeros, parts["scales"], g_idx, bits, method)


def _group(qc: dict[str, Any], k: int) -> int:
    g = int(qc.get("group_size", 128))
    return k if g <= 0 else g


def _unpack_rows(words: np.ndarray, bits: int) -> np.ndarray:
    """[R, C] words, each packing 32/bits values along the rows -> [R * 32/bits, C]."""
    per = 32 // bits
    shifts = (np.arange(per, dtype=np.uint32) * bits)[None, :, None]
    v = (words[:, None, :] >> shifts) & ((1 << bits) - 1)
    return v.reshape(words.shape[0] * per, words.shape[1]).astype(np.uint8)


def _unpack_cols(words: np.ndarray, bits: int) -> np.ndarray:
    """[R, C] words, each packing 32/bits values along the columns -> [R, C * 32/bits]."""
    return np.ascontiguousarray(_unpack_rows(words.T, bits).T)


def _unpack_awq(words: np.ndarray) -> np.ndarray:
    """[R, C] AWQ words -> [R, 8 C] values in output order."""
    nib = (words[:, :, None] >> (np.arange(8, dtype=np.uint32) * 4)) & 0xF  # [R, C, nibble]
    out = np.empty_like(nib)
    out[:, :, AWQ_ORDER] = nib  # nibble i holds output ORDER[i]
    return out.reshape(words.shape[0], -1).astype(np.uint8)


def _packed(q: np.ndarray, zeros: np.ndarray, scales: np.ndarray, g_idx: np.ndarray,
            bits: int, source: str) -> PackedWeight:
    """q [K, N] (input-major, as both formats store it), per-group zeros and scales
    [groups, N], g_idx [K] -> PackedWeight [N, K] in groups of 32."""
    k, n = q.shape
    perm = None
    if np.any(np.diff(g_idx) < 0):  # act-order: inputs sorted by group make groups contiguous
        perm = np.argsort(g_idx, kind="stable")
        q, g_idx = q[perm], g_idx[perm]
    if k % QK:
        raise ValueError(f"a quantized layer with {k} inputs (not a multiple of {QK}) is not "
                         "supported")
    group_of = g_idx[::QK]  # each block of 32 inputs lies in one group
    if not np.array_equal(np.repeat(group_of, QK), g_idx):
        raise ValueError("quantization groups that are not multiples of 32 inputs are not "
                         "supported")
    s = scales.astype(np.float32)[group_of].T  # [N, K / 32]
    z = zeros.astype(np.float32)[group_of].T
    qt = np.ascontiguousarray(q.T)  # [N, K]
    if bits == 4:
        qweight = pack_nibbles(qt.reshape(n, k // QK, QK)).reshape(n, k // 2)
        mins = -s * z
    else:  # held as signed bytes, q - 128: the min absorbs the shift
        qweight = (qt.astype(np.int16) - 128).astype(np.int8)
        mins = s * (128 - z)
    s16, m16 = s.astype(np.float16), mins.astype(np.float16)
    if np.array_equal(s16.astype(np.float32), s) and np.array_equal(m16.astype(np.float32), mins):
        s, mins = s16, m16
    return PackedWeight(bits, QK, qweight, np.ascontiguousarray(s), np.ascontiguousarray(mins),
                        (n, k), source, perm)


# -- writers (tests and tools) -----------------------------------------------------------------
def quantize_gptq(w: np.ndarray, bits: int = 4, group_size: int = 128, desc_act: bool = False,
                  sym: bool = True, seed: int = 0) -> dict[str, np.ndarray]:
    """A dense [N, K] weight in GPTQ's tensors (round to nearest per group; with desc_act a
    random act-order permutation). Returns {qweight, qzeros, scales, g_idx}."""
    n, k = w.shape
    g = k if group_size <= 0 else group_size
    order = np.random.default_rng(seed).permutation(k) if desc_act else np.arange(k)
    g_idx = np.empty(k, np.int32)
    g_idx[order] = np.arange(k) // g  # the i-th input processed belongs to group i // g
    q, zeros, scales = _round_groups(w.T.astype(np.float32), g_idx, -(-k // g), bits, sym)
    return {"qweight": _pack_rows(q, bits).view(np.int32),
            "qzeros": _pack_rows((zeros - 1).T.astype(np.uint32) & ((1 << bits) - 1),
                                 bits).T.copy().view(np.int32),
            "scales": scales, "g_idx": g_idx}


def quantize_awq(w: np.ndarray, group_size: int = 128) -> dict[str, np.ndarray]:
    """A dense [N, K] weight in AWQ's (gemm) tensors, asymmetric per group."""
    n, k = w.shape
    g = k if group_size <= 0 else group_size
    q, zeros, scales = _round_groups(w.T.astype(np.float32), np.arange(k) // g, -(-k // g), 4,
                                     sym=False)
    return {"qweight": _pack_awq(q).view(np.int32), "qzeros": _pack_awq(zeros).view(np.int32),
            "scales": scales}


def _round_groups(wt: np.ndarray, g_idx: np.ndarray, groups: int, bits: int, sym: bool
                  ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """wt [K, N] -> q [K, N], zeros [groups, N] (integers), scales float16 [groups, N]."""
    top = (1 << bits) - 1
    lo = np.stack([wt[g_idx == i].min(axis=0) for i in range(groups)])
    hi = np.stack([wt[g_idx == i].max(axis=0) for i in range(groups)])
    if sym:
        scale = np.maximum(np.abs(lo), np.abs(hi)) * 2 / top
        zeros = np.full_like(scale, (top + 1) // 2)
    else:
        scale = (hi - lo) / top
    scale = np.where(scale == 0, 1e-4, scale).astype(np.float16)
    s = scale.astype(np.float32)
    if not sym:
        zeros = np.clip(np.rint(-lo / s), 0, top)
    q = np.clip(np.rint(wt / s[g_idx]) + zeros[g_idx], 0, top)
    return q.astype(np.uint32), zeros.astype(np.uint32), scale


def _pack_rows(v: np.ndarray, bits: int) -> np.ndarray:
    per = 32 // bits
    r, c = v.shape
    v = v.astype(np.uint32).reshape(r // per, per, c)
    return np.bitwise_or.reduce(v << (np.arange(per, dtype=np.uint32) * bits)[None, :, None],
                                axis=1)


def _pack_awq(v: np.ndarray) -> np.ndarray:
    r, c = v.shape
    nib = v.astype(np.uint32).reshape(r, c // 8, 8)[:, :, AWQ_ORDER]  # nibble i: ORDER[i]
    return np.bitwise_or.reduce(nib << (np.arange(8, dtype=np.uint32) * 4), axis=2)


def dequantize_reference(method: str, parts: dict[str, np.ndarray], qc: dict[str, Any]
                         ) -> np.ndarray:
    """The format's own formula, straight from its tensors: float32 [N, K] (the oracle)."""
    bits = int(qc.get("bits", 4))
    if method == "gptq":
        q = _unpack_rows(parts["qweight"].view(np.uint32), bits).astype(np.float32)
        z = _unpack_cols(parts["qzeros"].view(np.uint32), bits).astype(np.float32) + 1
        g = parts["g_idx"].astype(np.int64)
    else:
        q = _unpack_awq(parts["qweight"].view(np.uint32)).astype(np.float32)
        z = _unpack_awq(parts["qzeros"].view(np.uint32)).astype(np.float32)
        g = np.arange(q.shape[0]) // _group(qc, q.shape[0])
    s = parts["scales"].astype(np.float32)
    return ((q - z[g]) * s[g]).T.copy()
