"""Which attention the tpu executor runs, and the one signature the model calls it with.

"pallas": quire's Pallas kernel compiled for the TPU (the default on a TPU).
"pallas-interpret": the same kernel in Pallas' TPU interpreter (any device; slow, for tests).
"reference": the pure jnp oracle (the default on JAX's CPU device).
Pick one with QUIRE_TPU_ATTENTION.
"""

from __future__ import annotations

import functools
import os

import jax

from quire.backends.tpu import reference
from quire.backends.tpu.kernel import KernelParams, ragged_paged_attention
from quire.backends.tpu.metadata import TpuAttentionMetadata

ATTENTION_CHOICES = ("pallas", "pallas-interpret", "reference")


def default_attention() -> str:
    choice = os.environ.get("QUIRE_TPU_ATTENTION")
    if choice is None:
        return "pallas" if jax.default_backend() == "tpu" else "reference"
    if choice not in ATTENTION_CHOICES:
        raise ValueError(f"QUIRE_TPU_ATTENTION={choice!r}; choose one of {ATTENTION_CHOICES}")
    return choice


def make_attention(choice: str, scale: float, sliding_window: int | None,
                   soft_cap: float | None, params: KernelParams):
    """(query [T, Hq, D], key_cache, value_cache [Hkv, N, S, D], md) -> [T, Hq, D]."""
    if choice == "reference":
        def attend(q: jax.Array, k: jax.Array, v: jax.Array,
                   md: TpuAttentionMetadata) -> jax.Array:
            return reference.paged_attention(q, k, v, md.block_tables, md.query_start_loc,
                                             md.seq_lens, scale, sliding_window, soft_cap)
        return attend
    interpret = False
    if choice == "pallas-interpret":
        from jax.experimental.pallas import tpu as pltpu

        interpret = pltpu.InterpretParams()
    return functools.partial(ragged_paged_attention, scale=scale, sliding_window=sliding_window,
                             soft_cap=soft_cap, params=params, interpret=interpret)
