"""HF checkpoint names -> the fused parameters quire's models hold, for every family.

Models fuse q/k/v into one ``qkv_proj`` and gate/up into one ``gate_up_proj`` (one matmul
each), stack a mixture-of-experts layer's experts into ``experts.w13`` [E, 2I, H] (gate | up)
and ``experts.w2`` [E, H, I] with the router as ``router.weight`` [E, H], and drop HF's
``self_attn.`` / ``mlp.`` prefixes. A checkpoint tensor lands in a ``WeightTarget``: the
fused parameter's name, for a fused one which shard it is, for a stacked one which expert::

    model.layers.3.self_attn.k_proj.weight          -> layers.3.qkv_proj.weight, shard 1
    model.layers.3.self_attn.qkv_proj.weight        -> layers.3.qkv_proj.weight (Phi-3: whole)
    model.layers.3.mlp.down_proj.weight             -> layers.3.down_proj.weight
    model.layers.3.block_sparse_moe.experts.5.w3.weight -> layers.3.experts.w13, expert 5,
                                                       shard 1 (Mixtral's per-expert files)
    model.layers.3.mlp.experts.gate_up_proj         -> layers.3.experts.w13 (stacked: whole)
    model.embed_tokens.weight                       -> embed_tokens.weight

Shards are stacked along the output dimension (rows of an [out, in] weight), in order.
"""

from __future__ import annotations

import re
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
    "self_attn.qkv_proj.weight": ("qkv_proj.weight", None),
    "self_attn.o_proj.weight": ("o_proj.weight", None),
    "self_attn.q_norm.weight": ("q_norm.weight", None),
    "self_attn.k_norm.weight": ("k_norm.weight", None),
    "mlp.gate_proj.weight": ("gate_up_proj.weight", 0),
    "mlp.up_proj.weight": ("gate_up_proj.weight", 1),
    "mlp.gate_up_proj.weight": ("gate_up_proj.weight", None),
    "mlp.down_proj.weight": ("down_proj.weight", None),
    "input_layernorm.weight": ("input_layernorm.weight", None),
    "post_attention_layernorm.weight": ("post_attention_layernorm.weight", None),
    "pre_feedforward_layernorm.weight": ("pre_feedforward_layernorm.weight", None),
    "post_feedforward_layernorm.weight": ("post_feedforward_layernorm.weight", None),
    # mixture of experts: the router and stacked experts (transformers >= 5 in memory)
    "mlp.gate.weight": ("router.weight", None),
    "block_sparse_moe.gate.weight": ("router.weight", None),
    "mlp.experts.gate_up_proj": ("experts.w13", None),
    "mlp.experts.down_proj": ("experts.w2", None),
}
# One expert's tensor: (prefix, expert, name) -> (fused, shard).
_EXPERT_RE = re.compile(r"(mlp|block_sparse_moe)\.experts\.(\d+)\.(\w+)\.weight")
_EXPERT_PARTS: dict[str, tuple[str, int | None]] = {
    "w1": ("experts.w13", 0), "w3": ("experts.w13", 1), "w2": ("experts.w2", None),
    "gate_proj": ("experts.w13", 0), "up_proj": ("experts.w13", 1),
    "down_proj": ("experts.w2", None),
}
_TOP_LEVEL = ("embed_tokens.weight", "norm.weight", "lm_head.weight")
_NORMS = ("input_layernorm.weight", "post_attention_layernorm.weight",
          "pre_feedforward_layernorm.weight", "post_feedforward_layernorm.weight",
          "q_norm.weight", "k_norm.weight")


@dataclass(frozen=True, slots=True)
class WeightTarget:
    name: str  # the model's parameter, e.g. "layers.3.qkv_proj.weight"
    shard: int | None  # index of this tensor inside a fused parameter; None: all of them
    expert: int | None = None  # index into a stacked experts parameter; None: all of them

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
        if index.isdigit() and int(index) < cfg.num_layers:
            if part in _LAYER_PARTS:
                fused, shard = _LAYER_PARTS[part]
                return WeightTarget(f"layers.{index}.{fused}", shard)
            m = _EXPERT_RE.fullmatch(part)
            if m is not None and m.group(3) in _EXPERT_PARTS \
                    and int(m.group(2)) < cfg.num_experts:
                fused, shard = _EXPERT_PARTS[m.group(3)]
                return WeightTarget(f"layers.{index}.{fused}", shard, int(m.group(2)))
    raise ValueError(f"checkpoint tensor {hf_name!r} has no place in {cfg.architecture}")


def is_norm(target: WeightTarget) -> bool:
    """An RMSNorm weight (Gemma stores these as w - 1)."""
    return target.part in _NORMS or target.name == "norm.weight"


def shard_sizes(cfg: ModelArchConfig, part: str) -> tuple[int, ...]:
    """Output rows of each shard of a fused parameter ("qkv_proj.weight", ...)."""
    if part.startswith("qkv_proj."):
        kv = cfg.num_kv_heads * cfg.head_size
        return (cfg.num_heads * cfg.head_size, kv, kv)
    if part.startswith("gate_up_proj."):
        return (cfg.intermediate_size,) * 2
    if part == "experts.w13":
        return (cfg.moe_intermediate_size,) * 2
    raise ValueError(f"{part!r} is not a fused parameter")


def _layer_parts(cfg: ModelArchConfig, layer: int) -> list[tuple[str, int | None]]:
    parts = [("qkv_proj.weight", s) for s in range(3)] + [
        ("o_proj.weight", None), ("input_layernorm.weight", None),
        ("post_attention_layernorm.weight", None)]
    if cfg.qkv_bias:
        parts += [("qkv_proj.bias", s) for s in range(3)]
    if cfg.qk_norm:
        parts += [("q_norm.weight", None), ("k_norm.weight", None)]
    if cfg.sandwich_norms:
        parts += [("pre_feedforward_layernorm.weight", None),
                  ("post_feedforward_layernorm.weight", None)]
    if cfg.is_moe_layer(layer):
        parts += [("router.weight", None), ("experts.w13", 0), ("experts.w13", 1),
                  ("experts.w2", None)]
    else:
        parts += [("gate_up_proj.weight", 0), ("gate_up_proj.weight", 1),
                  ("down_proj.weight", None)]
    return parts


def expected_targets(cfg: ModelArchConfig) -> list[WeightTarget]:
    """Every unit (parameter, shard, expert) a complete checkpoint of this architecture
    fills, one per shard of a fused parameter and per expert of a stacked one."""
    out = [WeightTarget(n, None) for n in _TOP_LEVEL
           if n != "lm_head.weight" or not cfg.tie_word_embeddings]
    for i in range(cfg.num_layers):
        for part, shard in _layer_parts(cfg, i):
            experts = range(cfg.num_experts) if part.startswith("experts.") else [None]
            out += [WeightTarget(f"layers.{i}.{part}", shard, e) for e in experts]
    return out


def covered(target: WeightTarget, cfg: ModelArchConfig) -> list[WeightTarget]:
    """The units of expected_targets() a loaded tensor fills: a whole fused parameter (shard
    None) fills every shard, a stacked experts tensor (expert None) every expert."""
    part = target.part
    shards: list[int | None] = [target.shard]
    if target.shard is None and (part.startswith(("qkv_proj.", "gate_up_proj."))
                                 or part == "experts.w13"):
        shards = list(range(len(shard_sizes(cfg, part))))
    experts: list[int | None] = [target.expert]
    if target.expert is None and part.startswith("experts."):
        experts = list(range(cfg.num_experts))
    return [WeightTarget(target.name, s, e) for s in shards for e in experts]
