"""An HF folder's config.json, read into the few numbers a Llama-family model needs, and
its weight files. No torch here: the tpu backend reads the same folders."""

from __future__ import annotations

import glob
import json
import math
import os
from dataclasses import dataclass, field
from typing import Any

import numpy as np


@dataclass(frozen=True, slots=True)
class ModelArchConfig:
    architecture: str
    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_size: int
    rms_norm_eps: float
    max_position_embeddings: int
    tie_word_embeddings: bool
    qkv_bias: bool
    qk_norm: bool
    rope_theta: float
    rope_scaling: dict[str, Any] = field(default_factory=dict)
    sliding_window: int | None = None
    torch_dtype: str | None = None
    bos_token_id: int | None = None
    eos_token_id: int | list[int] | None = None


def read_config_json(model_path: str) -> dict[str, Any]:
    path = os.path.join(model_path, "config.json")
    if not os.path.isfile(path):
        raise FileNotFoundError(
            f"no config.json in {model_path!r}: pass a Hugging Face model folder "
            "(config.json + *.safetensors + tokenizer files)"
        )
    with open(path, encoding="utf-8") as f:
        return json.load(f)


LLAMA_FAMILY = ("LlamaForCausalLM", "MistralForCausalLM", "Qwen2ForCausalLM",
                "Qwen3ForCausalLM")
_MODEL_TYPES = {"llama": "LlamaForCausalLM", "mistral": "MistralForCausalLM",
                "qwen2": "Qwen2ForCausalLM", "qwen3": "Qwen3ForCausalLM"}


def architecture_name(raw: dict[str, Any]) -> str:
    """config.json's architectures[0], else the class its model_type implies ("" if none)."""
    archs = raw.get("architectures") or []
    return archs[0] if archs else _MODEL_TYPES.get(raw.get("model_type", ""), "")


def parse_arch_config(raw: dict[str, Any], architecture: str) -> ModelArchConfig:
    num_heads = raw["num_attention_heads"]
    hidden = raw["hidden_size"]
    rope = dict(raw.get("rope_parameters") or raw.get("rope_scaling") or {})
    rope_theta = float(rope.pop("rope_theta", raw.get("rope_theta", 10000.0)))
    if rope.get("rope_type", rope.get("type", "default")) == "default":
        rope = {}
    model_type = raw.get("model_type", "")
    window = raw.get("sliding_window")
    if model_type in ("qwen2", "qwen3") and not raw.get("use_sliding_window", False):
        window = None
    return ModelArchConfig(
        architecture=architecture,
        vocab_size=raw["vocab_size"],
        hidden_size=hidden,
        intermediate_size=raw["intermediate_size"],
        num_layers=raw["num_hidden_layers"],
        num_heads=num_heads,
        num_kv_heads=raw.get("num_key_value_heads") or num_heads,
        head_size=raw.get("head_dim") or hidden // num_heads,
        rms_norm_eps=float(raw.get("rms_norm_eps", 1e-6)),
        max_position_embeddings=int(raw.get("max_position_embeddings", 2048)),
        tie_word_embeddings=bool(raw.get("tie_word_embeddings", False)),
        qkv_bias=bool(raw.get("attention_bias", False)) or model_type == "qwen2",
        qk_norm=model_type == "qwen3",
        rope_theta=rope_theta,
        rope_scaling=rope,
        sliding_window=window,
        torch_dtype=raw.get("dtype") or raw.get("torch_dtype"),
        bos_token_id=raw.get("bos_token_id"),
        eos_token_id=raw.get("eos_token_id"),
    )


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


def inv_frequencies(head_size: int, theta: float, scaling: dict[str, Any]) -> np.ndarray:
    """Rotary inverse frequencies [D/2] (float64): default, linear or llama3 scaling."""
    inv_freq = 1.0 / theta ** (np.arange(0, head_size, 2, dtype=np.float64) / head_size)
    kind = scaling.get("rope_type", scaling.get("type", "default"))
    if kind == "default":
        return inv_freq
    if kind == "linear":
        return inv_freq / scaling["factor"]
    if kind == "llama3":
        factor, low, high = scaling["factor"], scaling["low_freq_factor"], \
            scaling["high_freq_factor"]
        old_len = scaling["original_max_position_embeddings"]
        wavelen = 2 * math.pi / inv_freq
        scaled = np.where(wavelen > old_len / low, inv_freq / factor, inv_freq)
        smooth = (old_len / wavelen - low) / (high - low)
        smoothed = (1 - smooth) * scaled / factor + smooth * scaled
        is_medium = (wavelen >= old_len / high) & (wavelen <= old_len / low)
        return np.where(is_medium, smoothed, scaled)
    raise ValueError(f"rope scaling {kind!r} is not supported; supported: default, linear, "
                     "llama3")
