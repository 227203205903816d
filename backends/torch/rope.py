"""Rotary position embeddings (the rotate-half layout HF Llama uses), with llama3 and
linear scaling."""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn


def inv_frequencies(head_size: int, theta: float, scaling: dict[str, Any]) -> torch.Tensor:
    inv_freq = 1.0 / theta ** (torch.arange(0, head_size, 2, dtype=torch.float64) / head_size)
    kind = scaling.get("rope_type", scaling.get("type", "default"))
    if kind == "default":
        return inv_freq
    if kind == "linear":
        return inv_freq / scaling["factor"]
    if kind == "llama3":
        return _llama3(inv_freq, scaling)
    raise ValueError(
        f"rope scaling {kind!r} is not supported; supported: default, linear, llama3"
    )


def _llama3(inv_freq: torch.Tensor, s: dict[str, Any]) -> torch.Tensor:
    factor, low, high = s["factor"], s["low_freq_factor"], s["high_freq_factor"]
    old_len = s["original_max_position_embeddings"]
    wavelen = 2 * math.pi / inv_freq
    scaled = torch.where(wavelen > old_len / low, inv_freq / factor, inv_freq)
    smooth = (old_len / wavelen - low) / (high - low)
    smoothed = (1 - smooth) * scaled / factor + smooth * scaled
    is_medium = (wavelen >= old_len / high) & (wavelen <= old_len / low)
    return torch.where(is_medium, smoothed, scaled)


class RotaryEmbedding(nn.Module):
    def __init__(self, head_size: int, max_positions: int, theta: float,
                 scaling: dict[str, Any]) -> None:
        super().__init__()
        inv_freq = inv_frequencies(head_size, theta, scaling).float()
        t = torch.arange(max_positions, dtype=torch.float32)
        freqs = torch.outer(t, inv_freq)
        emb = torch.cat([freqs, freqs], dim=-1)
        # [max_positions, head_size] each. Plain attributes, not buffers: they stay fp32
        # when the model is cast to a lower precision.
        self.cos = emb.cos()
        self.sin = emb.sin()

    def table(self, positions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(cos, sin) fp32 [T, D] at positions [T]: looked up once per step, used by every
        layer."""
        return self.cos[positions], self.sin[positions]


class ApplyRotary(nn.Module):
    """Rotates q and k by a step's rope table (HF numerics: in the activations' dtype).
    A module, so a backend can swap in its own (the cpu backend fuses it)."""

    def forward(self, q: torch.Tensor, k: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor
                ) -> tuple[torch.Tensor, torch.Tensor]:
        """q [T, Hq, D]; k [T, Hkv, D]; cos, sin [T, D] fp32 from RotaryEmbedding.table()."""
        cos = cos.unsqueeze(1).to(q.dtype)
        sin = sin.unsqueeze(1).to(q.dtype)
        return q * cos + _rotate_half(q) * sin, k * cos + _rotate_half(k) * sin


def _rotate_half(x: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)
