"""Rotary-embedding frequencies (numpy), shared by the torch and JAX model code."""

from __future__ import annotations

import math
from typing import Any

import numpy as np


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
                     "llama3")
