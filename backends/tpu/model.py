"""Every built-in decoder as pure JAX functions over a params pytree, driven by
ModelArchConfig like the torch family's (Llama, Mistral, Qwen2, Qwen3, Gemma 2 and 3, Phi-3,
Mixtral, Qwen3-MoE). Tokens arrive packed, [T, hidden].

Params: {"embed": [V, H], "norm": [H], "lm_head": [H, V], "layers": [per layer, keyed by the
fused names of quire.models.weight_map: "qkv_proj.weight" [H, (Hq+2Hkv)*D],
"qkv_proj.bias" [(Hq+2Hkv)*D]?, "o_proj.weight" [Hq*D, H], "q_norm.weight"/"k_norm.weight"
[D]?, "gate_up_proj.weight" [H, 2I], "down_proj.weight" [I, H], "input_layernorm.weight" /
"post_attention_layernorm.weight" [H], Gemma's "pre_feedforward_layernorm.weight" /
"post_feedforward_layernorm.weight" [H]?; an MoE layer has "router.weight" [H, E],
"experts.w13" [E, H, 2I], "experts.w2" [E, I, H] instead of the MLP's]}; matrices stored
input-major so a layer is x @ W. Gemma's norm weights are stored with the 1 added.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from quire.backends.tpu.int8 import Int8Matrix, int8_linear
from quire.models.config import ModelArchConfig
from quire.models.quant import PackedExperts, PackedWeight, concat_rows
from quire.models.rope import RopeSpec, rope_spec
from quire.models.weight_map import (
    WeightTarget,
    covered,
    expected_targets,
    is_norm,
    shard_sizes,
    weight_target,
)

Params = dict[str, Any]


@jax.tree_util.register_pytree_node_class
class QuantMatrix:
    """A weight kept quantized in the params pytree (quire.models.quant.PackedWeight's
    layout, output-major [N, K]); dequantized inside the jitted step, where XLA fuses the
    unpacking into the matmul that reads it."""

    def __init__(self, qweight: jax.Array, scales: jax.Array, mins: jax.Array | None,
                 perm: jax.Array | None, bits: int, group_size: int) -> None:
        self.qweight, self.scales, self.mins, self.perm = qweight, scales, mins, perm
        self.bits, self.group_size = bits, group_size

    def tree_flatten(self):
        return (self.qweight, self.scales, self.mins, self.perm), (self.bits, self.group_size)

    @classmethod
    def tree_unflatten(cls, aux, children):
        return cls(*children, *aux)

    @classmethod
    def from_packed(cls, w: PackedWeight) -> QuantMatrix:
        return cls(jnp.asarray(w.qweight), jnp.asarray(w.scales),
                   None if w.mins is None else jnp.asarray(w.mins),
                   None if w.perm is None else jnp.asarray(w.perm, jnp.int32), w.bits,
                   w.group_size)

    def rows(self, index: jax.Array, dtype: Any, stored_order: bool = False) -> jax.Array:
        """Rows index of the dense matrix, [len(index), K] in dtype; with stored_order, its
        inputs in the order the weight stores them (GPTQ act-order: perm's)."""
        q = self.qweight[index]
        if self.bits == 4:
            b = q.reshape(q.shape[0], -1, 16)
            q = jnp.concatenate([b & 0xF, b >> 4], axis=-1)
        g = self.group_size
        w = q.reshape(q.shape[0], -1, g).astype(jnp.float32) * \
            self.scales[index].astype(jnp.float32)[..., None]
        if self.mins is not None:
            w = w + self.mins[index].astype(jnp.float32)[..., None]
        w = w.reshape(q.shape[0], -1)
        if self.perm is not None and not stored_order:
            w = jnp.zeros_like(w).at[:, self.perm].set(w)
        return w.astype(dtype)

    def dense(self, dtype: Any) -> jax.Array:
        """The whole matrix [N, K], inputs in stored order."""
        return self.rows(jnp.arange(self.qweight.shape[0]), dtype, stored_order=True)


def linear(x: jax.Array, w: jax.Array | QuantMatrix | Int8Matrix) -> jax.Array:
    """x [T, K] times a layer's weight: dense ones are stored input-major [K, N], quantized
    ones output-major [N, K] (act-order ones with x's columns gathered into their order),
    --quantization int8's input-major with column scales (int8.py)."""
    if isinstance(w, Int8Matrix):
        return int8_linear(x, w)
    if isinstance(w, QuantMatrix):
        if w.perm is not None:
            x = jnp.take(x, w.perm, axis=-1)
        return x @ w.dense(x.dtype).T
    return x @ w
KVCache = tuple[jax.Array, jax.Array]  # keys, values [Hkv, N, S, D]
AttentionFn = Callable[..., jax.Array]
WriteFn = Callable[..., KVCache]


def rms_norm(x: jax.Array, weight: jax.Array, eps: float) -> jax.Array:
    xf = x.astype(jnp.float32)
    xf = xf * jax.lax.rsqrt(jnp.mean(xf * xf, axis=-1, keepdims=True) + eps)
    return weight * xf.astype(x.dtype)


def rope(x: jax.Array, positions: jax.Array, spec: RopeSpec) -> jax.Array:
    """x [T, H, D] rotated (rotate-half layout) at positions [T]; with a partial rotary
    dimension R < D only the leading R of each head. LongRoPE: positions from original_max
    on take the long frequencies (as the torch family does)."""
    inv_freq = jnp.asarray(spec.inv_freq, jnp.float32)[None, :]
    if spec.long_inv_freq is not None:
        inv_freq = jnp.where((positions >= spec.original_max)[:, None],
                             jnp.asarray(spec.long_inv_freq, jnp.float32)[None, :], inv_freq)
    freqs = positions.astype(jnp.float32)[:, None] * inv_freq
    emb = jnp.concatenate([freqs, freqs], axis=-1)[:, None, :]
    cos = (jnp.cos(emb) * spec.attention_factor).astype(x.dtype)
    sin = (jnp.sin(emb) * spec.attention_factor).astype(x.dtype)
    r = emb.shape[-1]
    x_rot, x_pass = x[..., :r], x[..., r:]
    half = r // 2
    rotated = jnp.concatenate([-x_rot[..., half:], x_rot[..., :half]], axis=-1)
    return jnp.concatenate([x_rot * cos + rotated * sin, x_pass], axis=-1)


def _act(gate: jax.Array, kind: str) -> jax.Array:
    return jax.nn.silu(gate) if kind == "silu" else jax.nn.gelu(gate, approximate=True)


def moe(x: jax.Array, layer: dict, cfg: ModelArchConfig) -> jax.Array:
    """The experts of one layer, static shapes: the T*k (token, expert) pairs sorted by
    expert and run as grouped matmuls (lax.ragged_dot), then summed back per token."""
    k = cfg.num_experts_per_tok
    logits = x @ layer["router.weight"]
    probs = jax.nn.softmax(logits.astype(jnp.float32), axis=-1)
    weights, ids = jax.lax.top_k(probs, k)
    if cfg.norm_topk_prob:
        weights = weights / weights.sum(axis=-1, keepdims=True)
    flat = ids.reshape(-1)
    order = jnp.argsort(flat, stable=True)
    token_of = order // k
    group_sizes = jnp.bincount(flat, length=cfg.num_experts).astype(jnp.int32)
    h = jax.lax.ragged_dot(x[token_of], layer["experts.w13"], group_sizes)
    gate, up = jnp.split(h, 2, axis=-1)
    out = jax.lax.ragged_dot(_act(gate, cfg.hidden_act) * up, layer["experts.w2"], group_sizes)
    out = out * weights.reshape(-1)[order][:, None].astype(out.dtype)
    return jnp.zeros_like(x).at[token_of].add(out)


def forward(params: Params, kv_caches: list[KVCache], input_ids: jax.Array,
            positions: jax.Array, md: Any, *, cfg: ModelArchConfig,
            attention: list[AttentionFn], write_kv: WriteFn,
            layer_group: tuple[int, ...] = (), layer_slot: tuple[int, ...] = ()
            ) -> tuple[jax.Array, list[KVCache]]:
    """input_ids, positions [T] -> (final hidden [T, H], the updated caches). attention:
    one function per layer (their windows differ). md: the attention metadata, or with
    layer_group (a hybrid KV cache, quire.core.kv_groups) one per KV group, layer i
    reading md[layer_group[i]] and keeping its K/V in kv_caches[layer_slot[i]] (a cache
    shared with the same slot of other groups; default: one cache per layer)."""
    num_tokens = input_ids.shape[0]
    hq, hkv, d = cfg.num_heads, cfg.num_kv_heads, cfg.head_size
    embed = params["embed"]
    x = embed.rows(input_ids, params["norm"].dtype) if isinstance(embed, QuantMatrix) \
        else embed[input_ids]
    if cfg.embed_scale is not None:
        x = x * jnp.asarray(cfg.embed_scale, x.dtype)
    eps = cfg.rms_norm_eps
    caches = list(kv_caches)
    for i, layer in enumerate(params["layers"]):
        layer_md = md[layer_group[i]] if layer_group else md
        slot = layer_slot[i] if layer_slot else i
        k_cache, v_cache = caches[slot]
        h = rms_norm(x, layer["input_layernorm.weight"], eps)
        qkv = linear(h, layer["qkv_proj.weight"])
        if "qkv_proj.bias" in layer:
            qkv = qkv + layer["qkv_proj.bias"]
        q = qkv[:, : hq * d].reshape(num_tokens, hq, d)
        k = qkv[:, hq * d : (hq + hkv) * d].reshape(num_tokens, hkv, d)
        v = qkv[:, (hq + hkv) * d :].reshape(num_tokens, hkv, d)
        if "q_norm.weight" in layer:
            q = rms_norm(q, layer["q_norm.weight"], eps)
            k = rms_norm(k, layer["k_norm.weight"], eps)
        spec = rope_spec(cfg.rotary_dim, *cfg.layer_rope(i))
        q, k = rope(q, positions, spec), rope(k, positions, spec)
        k_cache, v_cache = write_kv(k, v, k_cache, v_cache, layer_md.slot_mapping)
        attn = linear(attention[i](q, k_cache, v_cache, layer_md).reshape(num_tokens, hq * d),
                      layer["o_proj.weight"])
        if cfg.sandwich_norms:
            x = x + rms_norm(attn, layer["post_attention_layernorm.weight"], eps)
            h = rms_norm(x, layer["pre_feedforward_layernorm.weight"], eps)
        else:
            x = x + attn
            h = rms_norm(x, layer["post_attention_layernorm.weight"], eps)
        if "experts.w13" in layer:
            mlp = moe(h, layer, cfg)
        else:
            gate, up = jnp.split(linear(h, layer["gate_up_proj.weight"]), 2, axis=-1)
            mlp = linear(_act(gate, cfg.hidden_act) * up, layer["down_proj.weight"])
        if cfg.sandwich_norms:
            mlp = rms_norm(mlp, layer["post_feedforward_layernorm.weight"], eps)
        x = x + mlp
        caches[slot] = (k_cache, v_cache)
    return rms_norm(x, params["norm"], eps), caches


def compute_logits(params: Params, hidden: jax.Array, final_soft_cap: float | None = None
                   ) -> jax.Array:
    """hidden [S, H] -> fp32 logits [S, V]."""
    logits = linear(hidden, params["lm_head"]).astype(jnp.float32)
    if final_soft_cap is not None:
        logits = final_soft_cap * jnp.tanh(logits / final_soft_cap)
    return logits


# -- weights -------------------------------------------------------------------------------
def load_params(cfg: ModelArchConfig,
                weights: Iterable[tuple[str, np.ndarray | PackedWeight]], dtype: Any) -> Params:
    """HF-named arrays -> the params pytree on the default device, in dtype (fused as
    quire.models.weight_map says). PackedWeight matrices stay quantized (QuantMatrix) when
    all their shards share a format, else they are dequantized."""
    shards: dict[str, dict[int, np.ndarray]] = {}
    experts: dict[str, np.ndarray] = {}  # stacked experts parameters, [E, out, in]
    loaded: set[WeightTarget] = set()
    expected = expected_targets(cfg)
    for name, array in weights:
        target = weight_target(name, cfg)
        if target is None:
            continue
        loaded.update(covered(target, cfg))
        if target.part.startswith("experts."):
            _put_expert(experts, target, array, cfg)
            continue
        shards.setdefault(target.name, {})[target.shard or 0] = array
    missing = [t.name for t in expected if t not in loaded]
    if missing:
        raise ValueError(f"checkpoint is missing tensors: {missing[:8]}")

    def put(name: str, transpose: bool = False) -> jax.Array | QuantMatrix:
        parts = [shards[name][i] for i in sorted(shards[name])]
        if all(isinstance(p, PackedWeight) for p in parts):
            try:
                return QuantMatrix.from_packed(concat_rows(parts))
            except ValueError:
                pass  # shards of different formats: dequantized below
        dense = [p.dequantize() if isinstance(p, PackedWeight) else np.asarray(p, np.float32)
                 for p in parts]
        whole = np.concatenate(dense)
        if cfg.norm_offset and is_norm(WeightTarget(name, None)):
            whole = whole + 1.0  # Gemma stores w - 1 and computes x * (1 + w)
        return jnp.asarray(whole.T if transpose else whole, dtype=dtype)

    layers: list[dict[str, jax.Array]] = [{} for _ in range(cfg.num_layers)]
    for t in expected:
        if t.layer is None or t.part in layers[t.layer]:
            continue
        if t.part.startswith("experts."):  # [E, in, out]: x @ W per expert
            layers[t.layer][t.part] = jnp.asarray(experts[t.name].transpose(0, 2, 1), dtype)
        else:  # matrices input-major (x @ W); vectors as they are
            layers[t.layer][t.part] = put(t.name, t.part.endswith(("proj.weight",
                                                                   "router.weight")))
    embed = put("embed_tokens.weight")
    if cfg.tie_word_embeddings:
        lm_head = embed if isinstance(embed, QuantMatrix) else embed.T
    else:
        lm_head = put("lm_head.weight", True)
    return {"embed": embed, "norm": put("norm.weight"), "lm_head": lm_head, "layers": layers}


def _put_expert(experts: dict[str, np.ndarray], target: WeightTarget,
                array: np.ndarray | PackedWeight | PackedExperts, cfg: ModelArchConfig
                ) -> None:
    """One checkpoint tensor into a stacked experts parameter [E, out, in] (float32):
    quantized experts are dequantized here (lax.ragged_dot takes dense stacks)."""
    dense = array.dequantize() if isinstance(array, (PackedWeight, PackedExperts)) else \
        np.asarray(array, np.float32)
    if target.expert is None:  # the whole stack at once
        experts[target.name] = dense.copy()
        return
    if target.name not in experts:
        rows = sum(shard_sizes(cfg, target.part)) if target.part == "experts.w13" \
            else cfg.hidden_size
        cols = cfg.hidden_size if target.part == "experts.w13" else cfg.moe_intermediate_size
        experts[target.name] = np.zeros((cfg.num_experts, rows, cols), np.float32)
    rows_of = experts[target.name][target.expert]
    if target.shard is not None:
        size = shard_sizes(cfg, target.part)[target.shard]
        rows_of = rows_of[target.shard * size : (target.shard + 1) * size]
    rows_of[...] = dense
