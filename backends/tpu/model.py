"""The Llama family (Llama incl. llama3 rope, Mistral, Qwen2 qkv bias, Qwen3 q/k norm) as
pure JAX functions over a params pytree. Tokens arrive packed, [T, hidden].

Params: {"embed": [V, H], "norm": [H], "lm_head": [H, V], "layers": [per layer, keyed by the
fused names of quire.models.weight_map: "qkv_proj.weight" [H, (Hq+2Hkv)*D],
"qkv_proj.bias" [(Hq+2Hkv)*D]?, "o_proj.weight" [Hq*D, H], "q_norm.weight"/"k_norm.weight"
[D]?, "gate_up_proj.weight" [H, 2I], "down_proj.weight" [I, H], "input_layernorm.weight" /
"post_attention_layernorm.weight" [H]]}; matrices stored input-major so a layer is x @ W.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from quire.models.config import ModelArchConfig
from quire.models.quant import PackedWeight, concat_rows
from quire.models.rope import inv_frequencies
from quire.models.weight_map import WeightTarget, expected_targets, weight_target

Params = dict[str, Any]


@jax.tree_util.register_pytree_node_class
class QuantMatrix:
    """A weight kept quantized in the params pytree (quire.models.quant.PackedWeight's
    layout, output-major [N, K]); dequantized inside the jitted step, where XLA fuses the
    unpacking into the matmul that reads it."""

    def __init__(self, qweight: jax.Array, scales: jax.Array, mins: jax.Array | None,
                 bits: int, group_size: int) -> None:
        self.qweight, self.scales, self.mins = qweight, scales, mins
        self.bits, self.group_size = bits, group_size

    def tree_flatten(self):
        return (self.qweight, self.scales, self.mins), (self.bits, self.group_size)

    @classmethod
    def tree_unflatten(cls, aux, children):
        return cls(*children, *aux)

    @classmethod
    def from_packed(cls, w: PackedWeight) -> QuantMatrix:
        return cls(jnp.asarray(w.qweight), jnp.asarray(w.scales),
                   None if w.mins is None else jnp.asarray(w.mins), w.bits, w.group_size)

    def rows(self, index: jax.Array, dtype: Any) -> jax.Array:
        """Rows index of the dense matrix, [len(index), K] in dtype."""
        q = self.qweight[index]
        if self.bits == 4:
            b = q.reshape(q.shape[0], -1, 16)
            q = jnp.concatenate([b & 0xF, b >> 4], axis=-1)
        g = self.group_size
        w = q.reshape(q.shape[0], -1, g).astype(jnp.float32) * \
            self.scales[index].astype(jnp.float32)[..., None]
        if self.mins is not None:
            w = w + self.mins[index].astype(jnp.float32)[..., None]
        return w.reshape(q.shape[0], -1).astype(dtype)

    def dense(self, dtype: Any) -> jax.Array:
        return self.rows(jnp.arange(self.qweight.shape[0]), dtype)


def linear(x: jax.Array, w: jax.Array | QuantMatrix) -> jax.Array:
    """x [T, K] times a layer's weight: dense ones are stored input-major [K, N], quantized
    ones output-major [N, K]."""
    if isinstance(w, QuantMatrix):
        return x @ w.dense(x.dtype).T
    return x @ w
KVCache = tuple[jax.Array, jax.Array]  # keys, values [Hkv, N, S, D]
AttentionFn = Callable[..., jax.Array]
WriteFn = Callable[..., KVCache]


def rms_norm(x: jax.Array, weight: jax.Array, eps: float) -> jax.Array:
    xf = x.astype(jnp.float32)
    xf = xf * jax.lax.rsqrt(jnp.mean(xf * xf, axis=-1, keepdims=True) + eps)
    return weight * xf.astype(x.dtype)


def rope(x: jax.Array, positions: jax.Array, inv_freq: jax.Array) -> jax.Array:
    """x [T, H, D] rotated (rotate-half layout) at positions [T]."""
    freqs = positions.astype(jnp.float32)[:, None] * inv_freq[None, :]
    emb = jnp.concatenate([freqs, freqs], axis=-1)[:, None, :]
    cos, sin = jnp.cos(emb).astype(x.dtype), jnp.sin(emb).astype(x.dtype)
    half = x.shape[-1] // 2
    rotated = jnp.concatenate([-x[..., half:], x[..., :half]], axis=-1)
    return x * cos + rotated * sin


def forward(params: Params, kv_caches: list[KVCache], input_ids: jax.Array,
            positions: jax.Array, md: Any, *, cfg: ModelArchConfig, attention: AttentionFn,
            write_kv: WriteFn) -> tuple[jax.Array, list[KVCache]]:
    """input_ids, positions [T] -> (final hidden [T, H], the updated caches)."""
    num_tokens = input_ids.shape[0]
    hq, hkv, d = cfg.num_heads, cfg.num_kv_heads, cfg.head_size
    inv_freq = jnp.asarray(inv_frequencies(d, cfg.rope_theta, cfg.rope_scaling), jnp.float32)
    embed = params["embed"]
    x = embed.rows(input_ids, params["norm"].dtype) if isinstance(embed, QuantMatrix) \
        else embed[input_ids]
    new_caches = []
    for layer, (k_cache, v_cache) in zip(params["layers"], kv_caches):
        h = rms_norm(x, layer["input_layernorm.weight"], cfg.rms_norm_eps)
        qkv = linear(h, layer["qkv_proj.weight"])
        if "qkv_proj.bias" in layer:
            qkv = qkv + layer["qkv_proj.bias"]
        q = qkv[:, : hq * d].reshape(num_tokens, hq, d)
        k = qkv[:, hq * d : (hq + hkv) * d].reshape(num_tokens, hkv, d)
        v = qkv[:, (hq + hkv) * d :].reshape(num_tokens, hkv, d)
        if "q_norm.weight" in layer:
            q = rms_norm(q, layer["q_norm.weight"], cfg.rms_norm_eps)
            k = rms_norm(k, layer["k_norm.weight"], cfg.rms_norm_eps)
        q, k = rope(q, positions, inv_freq), rope(k, positions, inv_freq)
        k_cache, v_cache = write_kv(k, v, k_cache, v_cache, md.slot_mapping)
        attn = attention(q, k_cache, v_cache, md)
        x = x + linear(attn.reshape(num_tokens, hq * d), layer["o_proj.weight"])
        h = rms_norm(x, layer["post_attention_layernorm.weight"], cfg.rms_norm_eps)
        gate_up = linear(h, layer["gate_up_proj.weight"])
        gate, up = jnp.split(gate_up, 2, axis=-1)
        x = x + linear(jax.nn.silu(gate) * up, layer["down_proj.weight"])
        new_caches.append((k_cache, v_cache))
    return rms_norm(x, params["norm"], cfg.rms_norm_eps), new_caches


def compute_logits(params: Params, hidden: jax.Array) -> jax.Array:
    """hidden [S, H] -> fp32 logits [S, V]."""
    return linear(hidden, params["lm_head"]).astype(jnp.float32)


# -- weights -------------------------------------------------------------------------------
def load_params(cfg: ModelArchConfig,
                weights: Iterable[tuple[str, np.ndarray | PackedWeight]], dtype: Any) -> Params:
    """HF-named arrays -> the params pytree on the default device, in dtype (fused as
    quire.models.weight_map says). PackedWeight matrices stay quantized (QuantMatrix) when
    all their shards share a format, else they are dequantized."""
    shards: dict[str, dict[int, np.ndarray]] = {}
    loaded: set[WeightTarget] = set()
    expected = expected_targets(cfg)
    for name, array in weights:
        target = weight_target(name, cfg)
        if target is None:
            continue
        shards.setdefault(target.name, {})[target.shard or 0] = array
        loaded.add(target)
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
        return jnp.asarray(whole.T if transpose else whole, dtype=dtype)

    layers: list[dict[str, jax.Array]] = [{} for _ in range(cfg.num_layers)]
    for t in expected:
        if t.layer is not None and t.part not in layers[t.layer]:
            # Matrices input-major (x @ W); vectors as they are.
            layers[t.layer][t.part] = put(t.name, t.part.endswith("proj.weight"))
    embed = put("embed_tokens.weight")
    if cfg.tie_word_embeddings:
        lm_head = embed if isinstance(embed, QuantMatrix) else embed.T
    else:
        lm_head = put("lm_head.weight", True)
    return {"embed": embed, "norm": put("norm.weight"), "lm_head": lm_head, "layers": layers}
