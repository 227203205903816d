"""Reusable scratch buffers: large temporaries allocated once and reused every step (fresh
multi-MB allocations cost page faults that can exceed the work done in them)."""

from __future__ import annotations

import torch


class Workspace:
    def __init__(self, device: torch.device | str = "cpu") -> None:
        self.device = torch.device(device)
        self._buffers: dict[tuple[str, torch.dtype], torch.Tensor] = {}

    def get(self, name: str, shape: tuple[int, ...], dtype: torch.dtype) -> torch.Tensor:
        """A tensor of `shape` whose contents are undefined; valid until the next get(name)."""
        numel = 1
        for n in shape:
            numel *= n
        key = (name, dtype)
        buf = self._buffers.get(key)
        if buf is None or buf.numel() < numel:
            buf = torch.empty(max(numel, 2 * (buf.numel() if buf is not None else 0)),
                              dtype=dtype, device=self.device)
            self._buffers[key] = buf
        return buf[:numel].view(shape)
