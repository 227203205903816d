"""An architecture's description: config.json (or GGUF metadata) read into the numbers a
model needs, framework-neutral, shared by the torch and JAX families."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from typing import Any

from quire.core.executor import ModelInfo


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


def model_info(cfg: ModelArchConfig, dtype: str) -> ModelInfo:
    """What the core needs to know of a loaded model (dtype: the resolved engine dtype)."""
    return ModelInfo(
        vocab_size=cfg.vocab_size, max_model_len=cfg.max_position_embeddings,
        num_layers=cfg.num_layers, num_kv_heads=cfg.num_kv_heads, head_size=cfg.head_size,
        dtype=dtype, architecture=cfg.architecture,
    )
