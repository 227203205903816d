"""--quantization int8 in the JAX family: int8 weights in the params pytree, and the int8
matmul TPU's MXU runs natively.

A dense checkpoint's layer projections (q/k/v, o, gate/up, down) are quantized at load to
int8 with one float32 scale per output channel (symmetric, round to nearest): half of bf16's
weight bytes, which is what a decode step reads. By default activations stay in the model's
dtype: the int8 weight is widened inside the jitted matmul (XLA fuses it) and the column
scales applied to its result, so the output equals the dequantized weights' up to float
rounding (vLLM's TPU int8 is weight-only too).

QUIRE_TPU_INT8_ACTIVATIONS=1 also quantizes each linear's input per token (symmetric,
dynamic: one scale per row) and runs int8 x int8 -> int32 in one dot_general, the MXU's
native int8 mode (twice bf16's rate on TPU v5e / v6e: for compute-bound prefill), scaled back
by row scale x column scale. It costs accuracy: ~0.7% relative error per matmul on
Gaussian inputs, ~1.6% on the MLP's silu x up; on the test suite's random models greedy
decoding keeps ~97-98% of the reference's tokens (benchmarks/QUANTIZATION.md).

The embedding, the LM head, norms, the router and experts' stacks stay dense.
"""

from __future__ import annotations

import os
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

_QMAX = 127.0
# The layer matrices this method quantizes (fused names, stored input-major [K, N]).
PROJECTIONS = ("qkv_proj.weight", "o_proj.weight", "gate_up_proj.weight", "down_proj.weight")


def quantize_per_channel(w: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """w [N, K] (output-major, as checkpoints store it) -> int8 q [N, K], float32 scales
    [N] with w ~ q * scales[:, None]: symmetric, one scale per output channel."""
    w = np.asarray(w, np.float32)
    amax = np.abs(w).max(axis=1)
    scales = np.where(amax > 0, amax / _QMAX, 1.0).astype(np.float32)
    q = np.clip(np.rint(w / scales[:, None]), -_QMAX, _QMAX).astype(np.int8)
    return q, scales


def activations_quantized() -> bool:
    return os.environ.get("QUIRE_TPU_INT8_ACTIVATIONS", "0") == "1"


@jax.tree_util.register_pytree_node_class
class Int8Matrix:
    """An int8 weight input-major [K, N] with float32 column scales [N]; `int8_activations`
    (static) picks the W8A8 path (the native int8 matmul) or weight-only."""

    def __init__(self, qweight: jax.Array, scales: jax.Array, int8_activations: bool) -> None:
        self.qweight, self.scales, self.int8_activations = qweight, scales, int8_activations

    def tree_flatten(self):
        return (self.qweight, self.scales), (self.int8_activations,)

    @classmethod
    def tree_unflatten(cls, aux, children):
        return cls(*children, *aux)

    @classmethod
    def from_dense(cls, w_in_major: Any, int8_activations: bool) -> Int8Matrix:
        q, s = quantize_per_channel(np.asarray(w_in_major, np.float32).T)
        return cls(jnp.asarray(q.T), jnp.asarray(s), int8_activations)

    @property
    def nbytes(self) -> int:
        return int(self.qweight.size + 4 * self.scales.size)


def quantize_rows(x: jax.Array) -> tuple[jax.Array, jax.Array]:
    """x [T, K] -> int8 [T, K] and float32 row scales [T, 1]: symmetric, per token."""
    xf = x.astype(jnp.float32)
    amax = jnp.max(jnp.abs(xf), axis=-1, keepdims=True)
    scale = jnp.where(amax > 0, amax / _QMAX, 1.0)
    return jnp.clip(jnp.round(xf / scale), -_QMAX, _QMAX).astype(jnp.int8), scale


def int8_linear(x: jax.Array, w: Int8Matrix) -> jax.Array:
    """x [T, K] @ w -> [T, N] in x's dtype."""
    if not w.int8_activations:
        y = jnp.dot(x, w.qweight.astype(x.dtype), preferred_element_type=jnp.float32)
        return (y * w.scales).astype(x.dtype)
    xq, xs = quantize_rows(x)
    acc = jax.lax.dot_general(xq, w.qweight, (((1,), (0,)), ((), ())),
                              preferred_element_type=jnp.int32)
    return (acc.astype(jnp.float32) * xs * w.scales).astype(x.dtype)


def quantize_params(params: dict, int8_activations: bool | None = None) -> tuple[dict, int]:
    """The params pytree with every layer's dense projection as an Int8Matrix (others as
    they are: a weight a GGUF / GPTQ / AWQ checkpoint already quantized stays so); returns
    it and the quantized matrices' bytes."""
    if int8_activations is None:
        int8_activations = activations_quantized()
    nbytes = 0
    layers = []
    for layer in params["layers"]:
        out = dict(layer)
        for name in PROJECTIONS:
            w = layer.get(name)
            if isinstance(w, jax.Array) and w.ndim == 2:
                out[name] = Int8Matrix.from_dense(w, int8_activations)
                nbytes += out[name].nbytes
        layers.append(out)
    return {**params, "layers": layers}, nbytes
