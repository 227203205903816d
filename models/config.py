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
    # -- what families beyond Llama add (defaults: Llama's behaviour) ----------------------
    hidden_act: str = "silu"  # the MLP's gate activation: "silu" or "gelu_tanh"
    # Per layer, "full_attention" or "sliding_attention"; empty: every layer attends through
    # sliding_window (None: full).
    layer_types: tuple[str, ...] = ()
    attn_scale: float | None = None  # None: head_size ** -0.5
    attn_soft_cap: float | None = None  # cap * tanh(score / cap) on attention scores
    final_soft_cap: float | None = None  # the same on the output logits
    embed_scale: float | None = None  # token embeddings multiplied by it (Gemma: sqrt(H))
    norm_offset: bool = False  # RMSNorm weights stored as w - 1 (Gemma): x * (1 + w)
    sandwich_norms: bool = False  # Gemma 2/3: norms after attention and around the MLP
    # Rotary embedding of the sliding-window layers when it differs (Gemma 3).
    local_rope_theta: float | None = None
    local_rope_scaling: dict[str, Any] = field(default_factory=dict)
    partial_rotary_factor: float = 1.0  # the leading fraction of each head that rotates
    # Mixture of experts (0 experts: a dense MLP in every layer).
    num_experts: int = 0
    num_experts_per_tok: int = 0
    moe_intermediate_size: int = 0
    norm_topk_prob: bool = True  # renormalize the top-k router weights to sum to 1
    dense_layers: tuple[int, ...] = ()  # layers of an MoE model whose MLP is dense

    def layer_window(self, layer: int) -> int | None:
        """The attention window of a layer (None: full attention)."""
        if not self.layer_types:
            return self.sliding_window
        return self.sliding_window if self.layer_types[layer] == "sliding_attention" else None

    def layer_rope(self, layer: int) -> tuple[float, dict[str, Any]]:
        """(theta, scaling) of a layer's rotary embedding."""
        if self.local_rope_theta is not None and self.layer_window(layer) is not None:
            return self.local_rope_theta, self.local_rope_scaling
        return self.rope_theta, self.rope_scaling

    def is_moe_layer(self, layer: int) -> bool:
        return self.num_experts > 0 and layer not in self.dense_layers

    @property
    def rotary_dim(self) -> int:
        return int(self.head_size * self.partial_rotary_factor)


def read_config_json(model_path: str) -> dict[str, Any]:
    path = os.path.join(model_path, "config.json")
    if not os.path.isfile(path):
        raise FileNotFoundError(
            f"no config.json in {model_path!r}: pass a Hugging Face model folder "
            "(config.json + *.safetensors + tokenizer files)"
        )
    with open(path, encoding="utf-8") as f:
        return json.load(f)


# model_type -> the architecture class name, for every architecture quire builds in.
_MODEL_TYPES = {"llama": "LlamaForCausalLM", "mistral": "MistralForCausalLM",
                "qwen2": "Qwen2ForCausalLM", "qwen3": "Qwen3ForCausalLM",
                "gemma2": "Gemma2ForCausalLM", "gemma3_text": "Gemma3ForCausalLM",
                "phi3": "Phi3ForCausalLM", "mixtral": "MixtralForCausalLM",
                "qwen3_moe": "Qwen3MoeForCausalLM"}
BUILTIN_ARCHITECTURES = tuple(_MODEL_TYPES.values())
_GEMMA = ("gemma2", "gemma3_text")


def architecture_name(raw: dict[str, Any]) -> str:
    """config.json's architectures[0], else the class its model_type implies ("" if none)."""
    archs = raw.get("architectures") or []
    return archs[0] if archs else _MODEL_TYPES.get(raw.get("model_type", ""), "")


def _rope(raw: dict[str, Any], params: dict[str, Any] | None, default_theta: float
          ) -> tuple[float, dict[str, Any], float]:
    """(theta, scaling dict (empty: plain rope), partial rotary factor) of one rope entry."""
    rope = dict(params or {})
    theta = float(rope.pop("rope_theta", raw.get("rope_theta", default_theta)))
    partial = float(rope.pop("partial_rotary_factor", raw.get("partial_rotary_factor", 1.0)))
    kind = rope.get("rope_type", rope.get("type", "default"))
    if kind == "default":
        return theta, {}, partial
    if kind in ("su", "yarn") and "long_factor" in rope:  # Phi-3's older names for LongRoPE
        rope["rope_type"] = "longrope"
    if "original_max_position_embeddings" in raw:
        rope.setdefault("original_max_position_embeddings",
                        raw["original_max_position_embeddings"])
    rope.setdefault("max_position_embeddings", raw.get("max_position_embeddings", 2048))
    return theta, rope, partial


def _layer_types(raw: dict[str, Any], model_type: str) -> tuple[str, ...]:
    if raw.get("layer_types"):
        return tuple(raw["layer_types"])
    n = raw["num_hidden_layers"]
    if model_type == "gemma2":  # older configs: even layers slide
        return tuple("sliding_attention" if i % 2 == 0 else "full_attention" for i in range(n))
    if model_type == "gemma3_text":  # older configs: every sliding_window_pattern-th is global
        pattern = raw.get("sliding_window_pattern", 6)
        return tuple("full_attention" if (i + 1) % pattern == 0 else "sliding_attention"
                     for i in range(n))
    return ()


def parse_arch_config(raw: dict[str, Any], architecture: str) -> ModelArchConfig:
    num_heads = raw["num_attention_heads"]
    hidden = raw["hidden_size"]
    model_type = raw.get("model_type", "")
    rope_raw = raw.get("rope_parameters") or raw.get("rope_scaling") or {}
    local_theta, local_scaling = None, {}
    if "full_attention" in rope_raw:  # one rope per layer type (Gemma 3)
        rope_theta, rope, partial = _rope(raw, rope_raw["full_attention"], 10000.0)
        if rope_raw.get("sliding_attention"):
            local_theta, local_scaling, _ = _rope(raw, rope_raw["sliding_attention"], 10000.0)
    else:
        rope_theta, rope, partial = _rope(raw, rope_raw, 10000.0)
    if model_type == "gemma3_text" and local_theta is None:
        local_theta = float(raw.get("rope_local_base_freq", 10000.0))
    window = raw.get("sliding_window")
    if model_type in ("qwen2", "qwen3", "qwen3_moe") and not raw.get("use_sliding_window", False):
        window = None
    gemma = model_type in _GEMMA
    num_experts = int(raw.get("num_local_experts") or raw.get("num_experts") or 0)
    num_layers = raw["num_hidden_layers"]
    dense_layers = tuple(i for i in range(num_layers) if i in raw.get("mlp_only_layers", ())
                         or (i + 1) % raw.get("decoder_sparse_step", 1) != 0)
    act = raw.get("hidden_activation") or raw.get("hidden_act") or "silu"
    if act in ("gelu_pytorch_tanh", "gelu_tanh", "gelu_new", "gelu_fast"):
        act = "gelu_tanh"
    if act not in ("silu", "gelu_tanh"):
        raise ValueError(f"{architecture}: MLP activation {act!r} is not supported; supported: "
                         "silu, gelu_pytorch_tanh")
    scalar = raw.get("query_pre_attn_scalar")
    return ModelArchConfig(
        architecture=architecture,
        vocab_size=raw["vocab_size"],
        hidden_size=hidden,
        intermediate_size=raw["intermediate_size"],
        num_layers=num_layers,
        num_heads=num_heads,
        num_kv_heads=raw.get("num_key_value_heads") or num_heads,
        head_size=raw.get("head_dim") or hidden // num_heads,
        rms_norm_eps=float(raw.get("rms_norm_eps", 1e-6)),
        max_position_embeddings=int(raw.get("max_position_embeddings", 2048)),
        tie_word_embeddings=bool(raw.get("tie_word_embeddings", gemma)),
        qkv_bias=bool(raw.get("attention_bias", False)) or model_type == "qwen2",
        qk_norm=model_type in ("qwen3", "qwen3_moe", "gemma3_text"),
        rope_theta=rope_theta,
        rope_scaling=rope,
        sliding_window=window,
        torch_dtype=raw.get("dtype") or raw.get("torch_dtype"),
        bos_token_id=raw.get("bos_token_id"),
        eos_token_id=raw.get("eos_token_id"),
        hidden_act=act,
        layer_types=_layer_types(raw, model_type),
        attn_scale=None if scalar is None else float(scalar) ** -0.5,
        attn_soft_cap=raw.get("attn_logit_softcapping"),
        final_soft_cap=raw.get("final_logit_softcapping"),
        embed_scale=hidden**0.5 if gemma else None,
        norm_offset=gemma,
        sandwich_norms=gemma,
        local_rope_theta=local_theta,
        local_rope_scaling=local_scaling,
        partial_rotary_factor=partial,
        num_experts=num_experts,
        num_experts_per_tok=int(raw.get("num_experts_per_tok") or 0) if num_experts else 0,
        moe_intermediate_size=int(raw.get("moe_intermediate_size")
                                  or raw["intermediate_size"]) if num_experts else 0,
        norm_topk_prob=bool(raw.get("norm_topk_prob", True)),
        dense_layers=dense_layers if num_experts else (),
    )


def model_info(cfg: ModelArchConfig, dtype: str) -> ModelInfo:
    """What the core needs to know of a loaded model (dtype: the resolved engine dtype)."""
    return ModelInfo(
        vocab_size=cfg.vocab_size, max_model_len=cfg.max_position_embeddings,
        num_layers=cfg.num_layers, num_kv_heads=cfg.num_kv_heads, head_size=cfg.head_size,
        dtype=dtype, architecture=cfg.architecture,
        kv_window=cfg.sliding_window if cfg.sliding_window is not None and all(
            cfg.layer_window(i) is not None for i in range(cfg.num_layers)) else None,
        layer_windows=tuple(cfg.layer_window(i) for i in range(cfg.num_layers)),
    )
