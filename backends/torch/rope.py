"""Rotary position embeddings (the rotate-half layout HF Llama uses), with linear, llama3 and
LongRoPE scaling and partial rotation (the leading rotary_dim of each head)."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from quire.models.rope import RopeSpec


def _cos_sin(inv_freq: np.ndarray, max_positions: int, factor: float
             ) -> tuple[torch.Tensor, torch.Tensor]:
    t = torch.arange(max_positions, dtype=torch.float32)
    freqs = torch.outer(t, torch.from_numpy(inv_freq).float())
    emb = torch.cat([freqs, freqs], dim=-1)
    return emb.cos() * factor, emb.sin() * factor


class RotaryEmbedding(nn.Module):
    def __init__(self, spec: RopeSpec, max_positions: int) -> None:
        super().__init__()
        # [max_positions, rotary_dim] each. Plain attributes, not buffers: they stay fp32
        # when the model is cast to a lower precision.
        self.cos, self.sin = _cos_sin(spec.inv_freq, max_positions, spec.attention_factor)
        self.long = None if spec.long_inv_freq is None else \
            _cos_sin(spec.long_inv_freq, max_positions, spec.attention_factor)
        self.original_max = spec.original_max

    def table(self, positions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(cos, sin) fp32 [T, rotary_dim] at positions [T]: looked up once per step, used
        by every layer. LongRoPE: positions from original_max on take the long-context
        table (models/rope.py says how that relates to HF)."""
        if self.long is None:
            return self.cos[positions], self.sin[positions]
        use_long = (positions >= self.original_max).unsqueeze(1)
        return (torch.where(use_long, self.long[0][positions], self.cos[positions]),
                torch.where(use_long, self.long[1][positions], self.sin[positions]))


class ApplyRotary(nn.Module):
    """Rotates q and k by a step's rope table (HF numerics: in the activations' dtype).
    A module, so a backend can swap in its own (the cpu backend fuses it)."""

    def forward(self, q: torch.Tensor, k: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor
                ) -> tuple[torch.Tensor, torch.Tensor]:
        """q [T, Hq, D]; k [T, Hkv, D]; cos, sin [T, R] fp32 from RotaryEmbedding.table()
        (R < D: only the leading R of each head rotate)."""
        cos = cos.unsqueeze(1).to(q.dtype)
        sin = sin.unsqueeze(1).to(q.dtype)
        r = cos.shape[-1]
        if r < q.shape[-1]:
            q_rot, k_rot = q[..., :r], k[..., :r]
            return (torch.cat([q_rot * cos + _rotate_half(q_rot) * sin, q[..., r:]], -1),
                    torch.cat([k_rot * cos + _rotate_half(k_rot) * sin, k[..., r:]], -1))
        return q * cos + _rotate_half(q) * sin, k * cos + _rotate_half(k) * sin


def _rotate_half(x: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)
