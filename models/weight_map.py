"""HF checkpoint names -> the fused parameters quire's models hold, for every family.

Models fuse q/k/v into one ``qkv_proj`` and gate/up into one ``gate_up_proj`` (one matmul
each) and drop HF's ``self_attn.`` / ``mlp.`` prefixes. A checkpoint tensor lands in a
``WeightTarget``: the fused parameter's name and, for a fused one, which shard it is::

    model.layers.3.self_attn.k_proj.weight -> layers.3.qkv_proj.weight, shard 1
    model.layers.3.mlp.down_proj.weight    -> layers.3.down_proj.weight
    model.embed_tokens.weight              -> embed_tokens.weight

Shards are stacked along the output dimension (rows of an [out, in] weight), in order.
"""

from __future__ import annotations

from dataclasses import dataclass

from quire.models.config import ModelArchConfig

# HF name inside a layer (after "layers.N.") -> (fused name inside the layer, shard).
_LAYER_PARTS: dict[str, tuple[str, int | None]] = {
    "self_attn.q_proj.weight": ("qkv_proj.weight", 0),
    "self_attn.k_proj.weight": ("qkv_proj.weight", 1),
    "self_attn.v_proj.weight": ("qkv_proj.weight", 2),
    "self_attn.q_proj.bias": ("qkv_proj.bias", 0),
    "self_attn.k_proj.bias": ("qkv_proj.bias", 1),
    "self_attn.v_proj.bias": ("qkv_proj.bias", 2),
    "self_attn.o_proj.weight": ("o_proj.weight", None),
    "self_attn.q_norm.weight": ("q_norm.weight", None),
    "self_attn.k_norm.weight": ("k_norm.weight", None),
    "mlp.gate_proj.weight": ("gate_up_proj.weight", 0),
    "mlp.up_proj.weight": ("gate_up_proj.weight", 1),
    "mlp.down_proj.weight": ("down_proj.weight", None),
    "input_layernorm.weight": ("input_layernorm.weight", None),
    "post_attention_layernorm.weight": ("post_attention_layernorm.weight", None),
}
_TOP_LEVEL = ("embed_tokens.weight", "norm.weight", "lm_head.weight")


@dataclass(frozen=True, slots=True)
class WeightTarget:
    name: str  # the model's parameter, e.g. "layers.3.qkv_proj.weight"
    shard: int | None  # index of this tensor inside a fused parameter; None: the whole one

    @property
    def layer(self) -> int | None:
        """The decoder layer index, None for a top-level parameter."""
        return int(self.name.split(".", 2)[1]) if self.name.startswith("layers.") else None

    @property
    def part(self) -> str:
        """The name inside its layer ("qkv_proj.weight"), or the top-level name."""
        return self.name.split(".", 2)[2] if self.layer is not None else self.name


def weight_target(hf_name: str, cfg: ModelArchConfig) -> WeightTarget | None:
    """Where an HF-named checkpoint tensor goes; None for tensors a model does not keep
    (rotary caches, a tied lm_head). Raises ValueError for a name with no place."""
    name = hf_name.removeprefix("model.")
    if "rotary_emb" in name or (cfg.tie_word_embeddings and name == "lm_head.weight"):
        return None
    if name in _TOP_LEVEL:
        return WeightTarget(name, None)
    if name.startswith("layers."):
        _, index, part = name.split(".", 2)
        if part in _LAYER_PARTS and index.isdigit() and int(index) < cfg.num_layers:
            fused, shard = _LAYER_PARTS[part]
            return WeightTarget(f"layers.{index}.{fused}", shard)
    raise ValueError(f"checkpoint tensor {hf_name!r} has no place in {cfg.architecture}")


def shard_sizes(cfg: ModelArchConfig, part: str) -> tuple[int, ...]:
    """Output rows of each shard of a fused parameter ("qkv_proj.weight", ...)."""
    if part.startswith("qkv_proj."):
        kv = cfg.num_kv_heads * cfg.head_size
        return (cfg.num_heads * cfg.head_size, kv, kv)
    if part.startswith("gate_up_proj."):
        return (cfg.intermediate_size,) * 2
    raise ValueError(f"{part!r} is not a fused parameter")


def expected_targets(cfg: ModelArchConfig) -> list[WeightTarget]:
    """Every (parameter, shard) a complete checkpoint of this architecture fills."""
    parts = set(_LAYER_PARTS.values())
    if not cfg.qkv_bias:
        parts = {p for p in parts if p[0] != "qkv_proj.bias"}
    if not cfg.qk_norm:
        parts = {p for p in parts if p[0] not in ("q_norm.weight", "k_norm.weight")}
    out = [WeightTarget(n, None) for n in _TOP_LEVEL
           if n != "lm_head.weight" or not cfg.tie_word_embeddings]
    for i in range(cfg.num_layers):
        out += [WeightTarget(f"layers.{i}.{name}", shard) for name, shard in sorted(
            parts, key=lambda p: (p[0], -1 if p[1] is None else p[1]))]
    return out
