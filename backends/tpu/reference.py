"""Pure jnp paged attention: the oracle beside the Pallas kernel, and the attention the tpu
backend runs where Pallas would only be interpreted (JAX's CPU device).

Dimensions: T tokens, Hq query heads, Hkv KV heads, D head size, N blocks, S block size,
R requests, B max blocks per request. The cache layout is this backend's own:
key/value cache [Hkv, N, S, D] per layer (one KV head's page is contiguous).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

_MASK = -0.7 * float(jnp.finfo(jnp.float32).max)
_TOKENS_AT_ONCE = 16


def paged_attention(query: jax.Array, key_cache: jax.Array, value_cache: jax.Array,
                    block_tables: jax.Array, query_start_loc: jax.Array, seq_lens: jax.Array,
                    scale: float, sliding_window: int | None = None,
                    soft_cap: float | None = None) -> jax.Array:
    """Causal attention of packed ragged queries over paged K/V, in fp32.

    query [T, Hq, D]; key/value_cache [Hkv, N, S, D]; block_tables [R, B];
    query_start_loc [R+1]; seq_lens [R] -> [T, Hq, D] in query's dtype. Tokens past
    query_start_loc[-1] (padding) get zeros."""
    num_tokens, num_heads, head_size = query.shape
    num_kv_heads, _, block_size, _ = key_cache.shape
    group = num_heads // num_kv_heads
    max_len = block_tables.shape[1] * block_size
    token = jnp.arange(num_tokens)
    seq = jnp.clip(jnp.searchsorted(query_start_loc, token, side="right") - 1,
                   0, seq_lens.shape[0] - 1)
    is_real = token < query_start_loc[-1]
    q_pos = seq_lens[seq] - (query_start_loc[seq + 1] - token)  # [T]
    k_pos = jnp.arange(max_len)

    def one_token(args: tuple[jax.Array, jax.Array, jax.Array]) -> jax.Array:
        q, table, pos = args  # [Hq, D], [B], []
        keys = key_cache[:, table].reshape(num_kv_heads, max_len, head_size)
        values = value_cache[:, table].reshape(num_kv_heads, max_len, head_size)
        qf = q.reshape(num_kv_heads, group, head_size).astype(jnp.float32)
        scores = jnp.einsum("kgd,kld->kgl", qf, keys.astype(jnp.float32),
                            precision=jax.lax.Precision.HIGHEST) * scale
        if soft_cap is not None:
            scores = soft_cap * jnp.tanh(scores / soft_cap)
        visible = k_pos <= pos
        if sliding_window is not None:
            visible &= k_pos > pos - sliding_window
        probs = jax.nn.softmax(jnp.where(visible, scores, _MASK), axis=-1)
        return jnp.einsum("kgl,kld->kgd", probs, values.astype(jnp.float32),
                          precision=jax.lax.Precision.HIGHEST).reshape(num_heads, head_size)

    # Mapped in slices of tokens: gathered K/V stay [slice, Hkv, B*S, D] in memory.
    out = jax.lax.map(one_token, (query, block_tables[seq], q_pos), batch_size=_TOKENS_AT_ONCE)
    out = jnp.where(is_real[:, None, None], out, 0.0)
    return out.astype(query.dtype)


def write_kv(key: jax.Array, value: jax.Array, key_cache: jax.Array, value_cache: jax.Array,
             slot_mapping: jax.Array) -> tuple[jax.Array, jax.Array]:
    """key/value [T, Hkv, D] into key/value_cache [Hkv, N, S, D] at slot_mapping [T]
    (padding: slot 0, the null block). Returns the new caches (donate the old ones)."""
    hkv, n, s, d = key_cache.shape
    k = key_cache.reshape(hkv, n * s, d).at[:, slot_mapping].set(
        key.transpose(1, 0, 2).astype(key_cache.dtype))
    v = value_cache.reshape(hkv, n * s, d).at[:, slot_mapping].set(
        value.transpose(1, 0, 2).astype(value_cache.dtype))
    return k.reshape(hkv, n, s, d), v.reshape(hkv, n, s, d)
