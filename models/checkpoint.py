"""Checkpoint files, framework-neutral: an HF folder's safetensors (one file or a sharded
index) and GGUF files, as numpy arrays under HF tensor names.

Families with a faster native reader (torch's ``safe_open``) use ``safetensors_files`` and
``open_gguf`` directly; the JAX family reads everything through ``open_checkpoint``.
"""

from __future__ import annotations

import glob
import json
import os
import struct
from collections.abc import Iterator
from typing import Any

import numpy as np

from quire.models.config import read_config_json

Checkpoint = tuple[dict[str, Any], Iterator[tuple[str, np.ndarray]]]


def is_gguf(model_path: str) -> bool:
    """A .gguf path; raises FileNotFoundError when it names no file."""
    if not model_path.endswith(".gguf"):
        return False
    if not os.path.isfile(model_path):
        raise FileNotFoundError(f"no such GGUF file: {model_path!r}")
    return True


def open_checkpoint(model_path: str, keep_quantized: bool = False) -> Checkpoint:
    """(HF-style config dict, (HF name, array) iterator) for an HF folder or a .gguf file.
    Arrays keep the file's dtype (bf16 through ml_dtypes); GGUF tensors are dequantized,
    except, with keep_quantized, those quire.models.quant repacks (PackedWeight); so are a
    GPTQ / AWQ folder's quantized layers (quire.models.hf_quant)."""
    if is_gguf(model_path):
        from quire.models.gguf import open_gguf

        return open_gguf(model_path, keep_quantized)
    from quire.models.hf_quant import quantized_stream

    config = read_config_json(model_path)
    return config, iter(quantized_stream(config, _iter_folder(model_path), keep_quantized))


def _iter_folder(model_path: str) -> Iterator[tuple[str, np.ndarray]]:
    for path in safetensors_files(model_path):
        yield from read_safetensors(path)


def read_safetensors(path: str) -> Iterator[tuple[str, np.ndarray]]:
    """A .safetensors file: an 8-byte little-endian header size, a JSON header of
    {name: {dtype, shape, data_offsets}}, then the raw tensor bytes (memory-mapped)."""
    dtypes = _numpy_dtypes()
    data = np.memmap(path, dtype=np.uint8, mode="r")
    (header_size,) = struct.unpack("<Q", bytes(data[:8]))
    header = json.loads(bytes(data[8 : 8 + header_size]))
    base = 8 + header_size
    for name, entry in header.items():
        if name == "__metadata__":
            continue
        if entry["dtype"] not in dtypes:
            raise ValueError(f"{path}: tensor {name!r} has unsupported dtype {entry['dtype']}")
        start, end = entry["data_offsets"]
        raw = data[base + start : base + end]
        yield name, np.frombuffer(raw, dtype=dtypes[entry["dtype"]]).reshape(entry["shape"])


def _numpy_dtypes() -> dict[str, Any]:
    dtypes: dict[str, Any] = {
        "F64": np.float64, "F32": np.float32, "F16": np.float16, "I64": np.int64,
        "I32": np.int32, "I8": np.int8, "U8": np.uint8, "BOOL": np.bool_}
    try:
        import ml_dtypes  # numpy has no bfloat16 of its own
    except ImportError:
        return dtypes
    return {**dtypes, "BF16": ml_dtypes.bfloat16}


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


