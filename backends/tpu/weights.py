"""Checkpoints as numpy arrays, with no torch: HF safetensors folders (read from the file
format directly, bf16 through ml_dtypes) and GGUF files (shared with the torch family)."""

from __future__ import annotations

import json
import os
import struct
from collections.abc import Iterator
from typing import Any

import ml_dtypes
import numpy as np

from quire.backends.torch.model_config import read_config_json, safetensors_files

_DTYPES = {"F64": np.float64, "F32": np.float32, "F16": np.float16,
           "BF16": ml_dtypes.bfloat16, "I64": np.int64, "I32": np.int32, "I8": np.int8,
           "U8": np.uint8, "BOOL": np.bool_}


def open_checkpoint(model_path: str) -> tuple[dict[str, Any], Iterator[tuple[str, np.ndarray]]]:
    """(HF-style config dict, (HF name, array) iterator) for an HF folder or a .gguf file."""
    if model_path.endswith(".gguf"):
        from quire.backends.torch.gguf_loader import open_gguf

        if not os.path.isfile(model_path):
            raise FileNotFoundError(f"no such GGUF file: {model_path!r}")
        return open_gguf(model_path)
    return read_config_json(model_path), _iter_folder(model_path)


def _iter_folder(model_path: str) -> Iterator[tuple[str, np.ndarray]]:
    for path in safetensors_files(model_path):
        yield from read_safetensors(path)


def read_safetensors(path: str) -> Iterator[tuple[str, np.ndarray]]:
    """A .safetensors file: an 8-byte little-endian header size, a JSON header of
    {name: {dtype, shape, data_offsets}}, then the raw tensor bytes."""
    data = np.memmap(path, dtype=np.uint8, mode="r")
    (header_size,) = struct.unpack("<Q", bytes(data[:8]))
    header = json.loads(bytes(data[8 : 8 + header_size]))
    base = 8 + header_size
    for name, entry in header.items():
        if name == "__metadata__":
            continue
        if entry["dtype"] not in _DTYPES:
            raise ValueError(f"{path}: tensor {name!r} has unsupported dtype {entry['dtype']}")
        start, end = entry["data_offsets"]
        raw = data[base + start : base + end]
        yield name, np.frombuffer(raw, dtype=_DTYPES[entry["dtype"]]).reshape(entry["shape"])
