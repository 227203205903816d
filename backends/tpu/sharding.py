"""Tensor parallelism in the JAX family: one jax.sharding.Mesh with a "model" axis over N
devices, the params and KV cache placed with NamedSharding, and XLA (GSPMD) inserting the
collectives of the jitted step. The split is Megatron's, as in the torch family: q/k/v and
gate/up (and each expert's) by output columns, o/down by input rows, the embedding and LM
head by vocabulary, the KV cache by heads; norms and the router are replicated. A dimension
that does not divide stays replicated (correct, just not split). The Pallas kernel cannot be
partitioned by XLA, so it runs per shard under shard_map, each device on its KV heads.

On a CPU, test it with XLA_FLAGS=--xla_force_host_platform_device_count=N (set before JAX
starts).
"""

from __future__ import annotations

from typing import Any

import jax
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from quire.backends.tpu.int8 import Int8Matrix

AXIS = "model"
# Which dimension of a layer's parameter splits (by its fused name).
_SPLIT_DIM = {
    "qkv_proj.weight": 1, "qkv_proj.bias": 0, "o_proj.weight": 0,
    "gate_up_proj.weight": 1, "down_proj.weight": 0, "experts.w13": 2, "experts.w2": 1,
}


def make_mesh(size: int) -> Mesh:
    devices = jax.devices()
    if len(devices) < size:
        raise ValueError(
            f"tensor_parallel_size {size} needs {size} JAX devices; this host has "
            f"{len(devices)} ({devices[0].platform}). On a CPU, set "
            f"XLA_FLAGS=--xla_force_host_platform_device_count={size} before starting")
    return Mesh(devices[:size], (AXIS,))


def _spec(x: Any, dim: int | None, size: int) -> P:
    if dim is None or not hasattr(x, "shape") or x.shape[dim] % size:
        return P()
    spec: list[str | None] = [None] * len(x.shape)
    spec[dim] = AXIS
    return P(*spec)


def shard_params(params: dict, mesh: Mesh) -> dict:
    """The params pytree placed on the mesh (GGUF / GPTQ / AWQ matrices replicated,
    int8 ones split like dense)."""
    n = mesh.shape[AXIS]

    def put(x: Any, dim: int | None) -> Any:
        if isinstance(x, Int8Matrix):  # [K, N] split as dense; column scales with columns
            return Int8Matrix(put(x.qweight, dim), put(x.scales, 0 if dim == 1 else None),
                              x.int8_activations)
        if not isinstance(x, jax.Array):  # a QuantMatrix: replicated, whole
            return jax.device_put(x, NamedSharding(mesh, P()))
        return jax.device_put(x, NamedSharding(mesh, _spec(x, dim, n)))

    return {
        "embed": put(params["embed"], 0),
        "lm_head": put(params["lm_head"], 1),
        "norm": put(params["norm"], None),
        "layers": [{name: put(w, _SPLIT_DIM.get(name)) for name, w in layer.items()}
                   for layer in params["layers"]],
    }


def cache_sharding(mesh: Mesh, num_kv_heads: int) -> NamedSharding:
    """KV caches [Hkv, N, S, D] split by heads (replicated if the heads do not divide)."""
    heads_split = num_kv_heads % mesh.shape[AXIS] == 0
    return NamedSharding(mesh, P(AXIS) if heads_split else P())


def per_shard_attention(attend, mesh: Mesh, num_kv_heads: int):
    """attend(q [T, Hq, D], k_cache, v_cache [Hkv, N, S, D], md) run on each device's heads
    (shard_map): what a kernel XLA cannot partition (Pallas) needs."""
    if num_kv_heads % mesh.shape[AXIS]:
        raise ValueError(f"the Pallas kernel under tensor parallelism splits KV heads: "
                         f"{num_kv_heads} KV heads do not divide over {mesh.shape[AXIS]} "
                         "devices; use QUIRE_TPU_ATTENTION=reference or another size")
    heads = P(None, AXIS, None)

    return jax.shard_map(attend, mesh=mesh, in_specs=(heads, P(AXIS), P(AXIS), P()),
                         out_specs=heads, check_vma=False)
