"""The Llama family (Llama incl. llama3 rope, Mistral, Qwen2 qkv bias, Qwen3 q/k norm) as
pure JAX functions over a params pytree. Tokens arrive packed, [T, hidden].

Params: {"embed": [V, H], "norm": [H], "lm_head": [H, V], "layers": [per layer: "qkv"
[H, (Hq+2Hkv)*D], "qkv_bias" [(Hq+2Hkv)*D]?, "o" [Hq*D, H], "q_norm"/"k_norm" [D]?,
"gate_up" [H, 2I], "down" [I, H], "input_norm"/"post_norm" [H]]}; matrices stored
input-major so a layer is x @ W.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from quire.backends.torch.model_config import ModelArchConfig, inv_frequencies

Params = dict[str, Any]
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
    x = params["embed"][input_ids]
    new_caches = []
    for layer, (k_cache, v_cache) in zip(params["layers"], kv_caches):
        qkv = rms_norm(x, layer["input_norm"], cfg.rms_norm_eps) @ layer["qkv"]
        if "qkv_bias" in layer:
            qkv = qkv + layer["qkv_bias"]
        q = qkv[:, : hq * d].reshape(num_tokens, hq, d)
        k = qkv[:, hq * d : (hq + hkv) * d].reshape(num_tokens, hkv, d)
        v = qkv[:, (hq + hkv) * d :].reshape(num_tokens, hkv, d)
        if "q_norm" in layer:
            q = rms_norm(q, layer["q_norm"], cfg.rms_norm_eps)
            k = rms_norm(k, layer["k_norm"], cfg.rms_norm_eps)
        q, k = rope(q, positions, inv_freq), rope(k, positions, inv_freq)
        k_cache, v_cache = write_kv(k, v, k_cache, v_cache, md.slot_mapping)
        attn = attention(q, k_cache, v_cache, md)
        x = x + attn.reshape(num_tokens, hq * d) @ layer["o"]
        gate_up = rms_norm(x, layer["post_norm"], cfg.rms_norm_eps) @ layer["gate_up"]
        gate, up = jnp.split(gate_up, 2, axis=-1)
        x = x + (jax.nn.silu(gate) * up) @ layer["down"]
        new_caches.append((k_cache, v_cache))
    return rms_norm(x, params["norm"], cfg.rms_norm_eps), new_caches


def compute_logits(params: Params, hidden: jax.Array) -> jax.Array:
    """hidden [S, H] -> fp32 logits [S, V]."""
    return (hidden @ params["lm_head"]).astype(jnp.float32)


# -- weights -------------------------------------------------------------------------------
_LAYER_PARTS = {  # HF name after "model.layers.N." -> (our key, shard of a fused matrix)
    "self_attn.q_proj.weight": ("qkv", 0), "self_attn.k_proj.weight": ("qkv", 1),
    "self_attn.v_proj.weight": ("qkv", 2), "self_attn.q_proj.bias": ("qkv_bias", 0),
    "self_attn.k_proj.bias": ("qkv_bias", 1), "self_attn.v_proj.bias": ("qkv_bias", 2),
    "self_attn.o_proj.weight": ("o", None), "self_attn.q_norm.weight": ("q_norm", None),
    "self_attn.k_norm.weight": ("k_norm", None), "mlp.gate_proj.weight": ("gate_up", 0),
    "mlp.up_proj.weight": ("gate_up", 1), "mlp.down_proj.weight": ("down", None),
    "input_layernorm.weight": ("input_norm", None),
    "post_attention_layernorm.weight": ("post_norm", None),
}


def load_params(cfg: ModelArchConfig, weights: Iterable[tuple[str, np.ndarray]],
                dtype: Any) -> Params:
    """HF-named arrays -> the params pytree on the default device, in dtype."""
    layers: list[dict[str, Any]] = [{} for _ in range(cfg.num_layers)]
    top: dict[str, np.ndarray] = {}
    for name, array in weights:
        name = name.removeprefix("model.")
        if "rotary_emb" in name:
            continue
        if name.startswith("layers."):
            _, index, part = name.split(".", 2)
            if part not in _LAYER_PARTS:
                raise ValueError(f"checkpoint tensor {name!r} has no place in {cfg.architecture}")
            key, shard = _LAYER_PARTS[part]
            layer = layers[int(index)]
            layer[key] = array if shard is None else {**layer.get(key, {}), shard: array}
        elif name in ("embed_tokens.weight", "norm.weight", "lm_head.weight"):
            top[name] = array
        else:
            raise ValueError(f"checkpoint tensor {name!r} has no place in {cfg.architecture}")
    return _assemble(cfg, top, layers, dtype)


def _assemble(cfg: ModelArchConfig, top: dict[str, np.ndarray],
              layers: list[dict[str, Any]], dtype: Any) -> Params:
    def put(a: np.ndarray) -> jax.Array:
        return jnp.asarray(np.asarray(a, dtype=np.float32), dtype=dtype)

    def fused(parts: dict[int, np.ndarray], count: int, what: str) -> np.ndarray:
        if sorted(parts) != list(range(count)):
            raise ValueError(f"checkpoint is missing part of {what}")
        return np.concatenate([parts[i] for i in range(count)], axis=0)

    out_layers = []
    for i, layer in enumerate(layers):
        required = ["qkv", "o", "gate_up", "down", "input_norm", "post_norm"]
        required += ["q_norm", "k_norm"] if cfg.qk_norm else []
        required += ["qkv_bias"] if cfg.qkv_bias else []
        missing = [k for k in required if k not in layer]
        if missing:
            raise ValueError(f"checkpoint is missing tensors of layer {i}: {missing}")
        entry = {
            "qkv": put(fused(layer["qkv"], 3, f"layer {i} q/k/v").T),
            "o": put(layer["o"].T), "down": put(layer["down"].T),
            "gate_up": put(fused(layer["gate_up"], 2, f"layer {i} gate/up").T),
            "input_norm": put(layer["input_norm"]), "post_norm": put(layer["post_norm"]),
        }
        if cfg.qkv_bias:
            entry["qkv_bias"] = put(fused(layer["qkv_bias"], 3, f"layer {i} q/k/v bias"))
        if cfg.qk_norm:
            entry["q_norm"], entry["k_norm"] = put(layer["q_norm"]), put(layer["k_norm"])
        out_layers.append(entry)
    for name in ("embed_tokens.weight", "norm.weight"):
        if name not in top:
            raise ValueError(f"checkpoint is missing {name}")
    if not cfg.tie_word_embeddings and "lm_head.weight" not in top:
        raise ValueError("checkpoint is missing lm_head.weight")
    embed = put(top["embed_tokens.weight"])
    lm_head = embed.T if cfg.tie_word_embeddings else put(top["lm_head.weight"].T)
    return {"embed": embed, "norm": put(top["norm.weight"]), "lm_head": lm_head,
            "layers": out_layers}
