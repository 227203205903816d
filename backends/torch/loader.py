"""Weights from an HF folder: one model.safetensors or a sharded index."""

from __future__ import annotations

import glob
import json
import os
from collections.abc import Iterator
from typing import Any

import torch
from safetensors import safe_open

from quire.backends.torch.model_config import read_config_json


def safetensors_files(model_path: str) -> list[str]:
    index = os.path.join(model_path, "model.safetensors.index.json")
    if os.path.isfile(index):
        with open(index, encoding="utf-8") as f:
            weight_map = json.load(f)["weight_map"]
        files = [os.path.join(model_path, name) for name in sorted(set(weight_map.values()))]
        missing = [f for f in files if not os.path.isfile(f)]
        if missing:
            raise FileNotFoundError(f"shards named in {index} are missing: {missing}")
        return files
    files = sorted(glob.glob(os.path.join(model_path, "*.safetensors")))
    if not files:
        raise FileNotFoundError(
            f"no *.safetensors weights in {model_path!r}; quire reads safetensors "
            "(convert .bin checkpoints with transformers' save_pretrained)"
        )
    return files


def open_checkpoint(model_path: str) -> tuple[dict[str, Any], Iterator[tuple[str, torch.Tensor]]]:
    """(HF-style config dict, (name, tensor) iterator) for an HF folder or a .gguf file."""
    if model_path.endswith(".gguf"):
        from quire.backends.torch.gguf_loader import open_gguf

        if not os.path.isfile(model_path):
            raise FileNotFoundError(f"no such GGUF file: {model_path!r}")
        return open_gguf(model_path)
    return read_config_json(model_path), iter_weights(model_path)


def iter_weights(model_path: str) -> Iterator[tuple[str, torch.Tensor]]:
    for path in safetensors_files(model_path):
        with safe_open(path, framework="pt") as f:
            for name in f.keys():  # noqa: SIM118 (safe_open has no __iter__)
                yield name, f.get_tensor(name)
