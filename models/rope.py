"""Rotary-embedding frequencies (numpy), shared by the torch and JAX model code."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np


@dataclass(frozen=True)
class RopeSpec:
    """A rotary embedding: inverse frequencies [rotary_dim/2] (float64), and for LongRoPE the
    long-context set, used for positions >= original_max; cos and sin are multiplied by
    attention_factor. HF instead recomputes a whole sequence with the long set once it
    passes original_max (its generate drops the cache there), so the two agree on every
    sequence that fits in original_max and differ past it; the per-position rule keeps a
    token's rotation fixed under chunked prefill, prefix caching and preemption."""

    inv_freq: np.ndarray
    long_inv_freq: np.ndarray | None = None
    original_max: int = 0
    attention_factor: float = 1.0


def rope_spec(rotary_dim: int, theta: float, scaling: dict[str, Any]) -> RopeSpec:
    """The RopeSpec of a config's rope (see inv_frequencies for the plain kinds)."""
    kind = scaling.get("rope_type", scaling.get("type", "default"))
    if kind != "longrope":
        return RopeSpec(inv_frequencies(rotary_dim, theta, scaling))
    original = int(scaling["original_max_position_embeddings"])
    factor = scaling.get("factor") or scaling["max_position_embeddings"] / original
    attention = scaling.get("attention_factor")
    if attention is None:
        attention = 1.0 if factor <= 1.0 else \
            math.sqrt(1 + math.log(factor) / math.log(original))
    base = 1.0 / theta ** (np.arange(0, rotary_dim, 2, dtype=np.float64) / rotary_dim)

    def scaled(name: str) -> np.ndarray:
        ext = np.asarray(scaling[name], dtype=np.float64)
        if ext.shape != base.shape:
            raise ValueError(f"longrope {name} has {ext.size} entries; the rotary dimension "
                             f"{rotary_dim} needs {base.size}")
        return base / ext

    return RopeSpec(scaled("short_factor"), scaled("long_factor"), original, float(attention))


def inv_frequencies(head_size: int, theta: float, scaling: dict[str, Any]) -> np.ndarray:
    """Rotary inverse frequencies [D/2] (float64): default, linear or llama3 scaling."""
    inv_freq = 1.0 / theta ** (np.arange(0, head_size, 2, dtype=np.float64) / head_size)
    kind = scaling.get("rope_type", scaling.get("type", "default"))
    if kind == "default":
        return inv_freq
    if kind == "linear":
        return inv_freq / scaling["factor"]
    if kind == "llama3":
        factor, low, high = scaling["factor"], scaling["low_freq_factor"], \
            scaling["high_freq_factor"]
        old_len = scaling["original_max_position_embeddings"]
        wavelen = 2 * math.pi / inv_freq
        scaled = np.where(wavelen > old_len / low, inv_freq / factor, inv_freq)
        smooth = (old_len / wavelen - low) / (high - low)
        smoothed = (1 - smooth) * scaled / factor + smooth * scaled
        is_medium = (wavelen >= old_len / high) & (wavelen <= old_len / low)
        return np.where(is_medium, smoothed, scaled)
    raise ValueError(f"rope scaling {kind!r} is not supported; supported: default, linear, "
                     "llama3, longrope")
