"""Weights as torch tensors: safetensors through torch's own zero-copy reader, GGUF through
the shared model layer (quire.models)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import torch
from safetensors import safe_open

from quire.models.checkpoint import is_gguf, safetensors_files
from quire.models.config import read_config_json
from quire.models.quant import PackedWeight


def open_checkpoint(model_path: str, keep_quantized: bool = False
                    ) -> tuple[dict[str, Any], Iterator[tuple[str, torch.Tensor | PackedWeight]]]:
    """(HF-style config dict, (name, tensor) iterator) for an HF folder or a .gguf file.
    keep_quantized: GGUF tensors of a repackable format come as PackedWeight."""
    if is_gguf(model_path):
        from quire.models.gguf import open_gguf

        config, arrays = open_gguf(model_path, keep_quantized)
        return config, ((name, w if isinstance(w, PackedWeight) else torch.from_numpy(w))
                        for name, w in arrays)
    return read_config_json(model_path), iter_weights(model_path)


def iter_weights(model_path: str) -> Iterator[tuple[str, torch.Tensor]]:
    for path in safetensors_files(model_path):
        with safe_open(path, framework="pt") as f:
            for name in f.keys():  # noqa: SIM118 (safe_open has no __iter__)
                yield name, f.get_tensor(name)
