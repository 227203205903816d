"""Canonical-layout entry points of the tpu backend for the conformance kit: the Pallas
kernel (in the TPU interpreter off-TPU) on JAX arrays. Torch tensors or numpy arrays are
accepted too and converted; the result is a JAX array."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from quire.backends.tpu import reference
from quire.backends.tpu.kernel import KernelParams, ragged_paged_attention
from quire.backends.tpu.metadata import build_metadata

_PARAMS = KernelParams(query_block=8, pages_per_block=2)


def paged_attention(query, key_cache, value_cache, block_tables, query_start_loc, seq_lens,
                    scale: float, sliding_window: int | None = None,
                    soft_cap: float | None = None) -> jax.Array:
    """Shapes as quire.testing.reference.paged_attention (caches [N, S, Hkv, D])."""
    q, k, v = (_as_jax(x) for x in (query, key_cache, value_cache))
    qsl, lens, tables = (_as_numpy(x) for x in (query_start_loc, seq_lens, block_tables))
    md = build_metadata(qsl, lens, tables, np.zeros(q.shape[0], np.int32), _PARAMS.query_block)
    interpret = False
    if jax.default_backend() != "tpu":
        from jax.experimental.pallas import tpu as pltpu

        interpret = pltpu.InterpretParams()
    return ragged_paged_attention(q, k.transpose(2, 0, 1, 3), v.transpose(2, 0, 1, 3),
                                  jax.tree.map(jnp.asarray, md), scale=scale,
                                  sliding_window=sliding_window, soft_cap=soft_cap,
                                  params=_PARAMS, interpret=interpret)


def write_kv(key, value, key_cache, value_cache, slot_mapping) -> None:
    """key/value [T, Hkv, D] into key/value_cache [N, S, Hkv, D]. JAX arrays are immutable:
    the new caches are copied back into the caller's (torch or numpy) buffers."""
    k_new, v_new = reference.write_kv(
        _as_jax(key), _as_jax(value), _as_jax(key_cache).transpose(2, 0, 1, 3),
        _as_jax(value_cache).transpose(2, 0, 1, 3), jnp.asarray(_as_numpy(slot_mapping)))
    for dst, src in ((key_cache, k_new), (value_cache, v_new)):
        _copy_back(dst, np.array(src.transpose(1, 2, 0, 3), dtype=np.float32))


def _as_numpy(x) -> np.ndarray:
    if hasattr(x, "detach"):  # a torch tensor
        return x.detach().cpu().float().numpy() if x.is_floating_point() else x.cpu().numpy()
    return np.asarray(x)


def _as_jax(x) -> jax.Array:
    if hasattr(x, "detach") and x.is_floating_point():
        dtype = {"torch.bfloat16": jnp.bfloat16, "torch.float16": jnp.float16}.get(
            str(x.dtype), jnp.float32)
        return jnp.asarray(_as_numpy(x), dtype=dtype)
    return jnp.asarray(_as_numpy(x))


def _copy_back(dst, src: np.ndarray) -> None:
    if hasattr(dst, "copy_"):
        import torch

        dst.copy_(torch.from_numpy(src))
    else:
        dst[...] = src
