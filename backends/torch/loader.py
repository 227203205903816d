"""Weights from an HF folder: one model.safetensors or a sharded index."""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Any

import torch
from safetensors import safe_open

from quire.backends.torch.model_config import read_config_json, safetensors_files


def open_checkpoint(model_path: str) -> tuple[dict[str, Any], Iterator[tuple[str, torch.Tensor]]]:
    """(HF-style config dict, (name, tensor) iterator) for an HF folder or a .gguf file."""
    if model_path.endswith(".gguf"):
        from quire.backends.torch.gguf_loader import open_gguf

        if not os.path.isfile(model_path):
            raise FileNotFoundError(f"no such GGUF file: {model_path!r}")
        config, arrays = open_gguf(model_path)
        return config, ((name, torch.from_numpy(w)) for name, w in arrays)
    return read_config_json(model_path), iter_weights(model_path)


def iter_weights(model_path: str) -> Iterator[tuple[str, torch.Tensor]]:
    for path in safetensors_files(model_path):
        with safe_open(path, framework="pt") as f:
            for name in f.keys():  # noqa: SIM118 (safe_open has no __iter__)
                yield name, f.get_tensor(name)
