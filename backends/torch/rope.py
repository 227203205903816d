"""Rotary position embeddings (the rotate-half layout HF Llama uses), with llama3 and
linear scaling."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from quire.models.rope import inv_frequencies


class RotaryEmbedding(nn.Module):
    def __init__(self, head_size: int, max_positions: int, theta: float,
                 scaling: dict[str, Any]) -> None:
        super().__init__()
        inv_freq = torch.from_numpy(inv_frequencies(head_size, theta, scaling)).float()
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
