"""Weights as torch tensors: safetensors through torch's own zero-copy reader, GGUF through
the shared model layer (quire.models)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np
import torch
from safetensors import safe_open

from quire.models.checkpoint import is_gguf, safetensors_files
from quire.models.config import read_config_json
from quire.models.hf_quant import quantized_stream
from quire.models.quant import PackedExperts, PackedWeight


def open_checkpoint(model_path: str, keep_quantized: bool = False
                    ) -> tuple[dict[str, Any], Iterator[tuple[str, torch.Tensor | PackedWeight]]]:
    """(HF-style config dict, (name, tensor) iterator) for an HF folder or a .gguf file.
    keep_quantized: GGUF tensors of a repackable format, and a GPTQ / AWQ folder's quantized
    layers, come as PackedWeight (else dense, with a log line)."""
    if is_gguf(model_path):
        from quire.models.gguf import open_gguf

        config, arrays = open_gguf(model_path, keep_quantized)
        return config, ((name, w if isinstance(w, (PackedWeight, PackedExperts))
                         else torch.from_numpy(w)) for name, w in arrays)
    config = read_config_json(model_path)
    weights = quantized_stream(config, iter_weights(model_path), keep_quantized)
    return config, ((n, torch.from_numpy(w) if isinstance(w, np.ndarray) else w)
                    for n, w in weights)  # GPTQ / AWQ layers that came dense: numpy


def iter_weights(model_path: str) -> Iterator[tuple[str, torch.Tensor]]:
    for path in safetensors_files(model_path):
        with safe_open(path, framework="pt") as f:
            for name in f.keys():  # noqa: SIM118 (safe_open has no __iter__)
                yield name, f.get_tensor(name)
