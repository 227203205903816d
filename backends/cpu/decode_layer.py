"""The cpu backend's fused decode layer: for a step whose every row is a decode row, a
Llama-family layer whose projections are packed weights (lanes layout, quant_lanes.py; or
the rows kernel's, quant_native.py, on CPUs without AVX-512 BF16) or on the bf16 GEMM
(linear.VnniLinear) runs as one native call (layer_csrc.py)
instead of ~15 module calls from Python. The same kernels run in the same order, so the
output is bit-identical to the module path's; any step or layer it does not cover takes
that path (DecoderLayer.fast_path returns None).

Each layer's weights are handed to the native side once (decode_plan_new: converting a list
of 15 tensors costs ~10 µs a call, a third of a small layer's own work); the call then
names its plan. When every layer of a model is fused and all attend alike (one rotary
table, one window, one KV group), FusedModel runs the step's whole stack of layers in one
native call (the model's layers_fast_path), so Python is not re-entered between layers.

install() gives each eligible layer its fast path after the other cpu swaps (fused.py's
elementwise modules, the lanes and bf16-GEMM packing); QUIRE_CPU_FUSED_LAYER=0 leaves them
all off.
"""

from __future__ import annotations

import os
import weakref

import torch
from torch import nn

from quire.backends.cpu import native, quant_lanes, quant_native
from quire.backends.cpu.attention import CpuAttention
from quire.backends.cpu.fused import NativeApplyRotary, NativeRMSNorm, NativeSiluAndMul
from quire.backends.cpu.linear import VnniLinear
from quire.backends.torch.attention import AttentionMetadata
from quire.backends.torch.models.llama import DecoderLayer
from quire.backends.torch.parallel import RowParallel
from quire.backends.torch.quantization import QuantLinear

_DTYPES = (torch.bfloat16, torch.float32)
# Decode steps of up to this many rows run fused (a larger batch takes the module path, where
# Python's per-call cost is a small share of the step).
MAX_ROWS = 256


class FusedDecode:
    """One layer's fast path (DecoderLayer.fast_path)."""

    def __init__(self, layer: DecoderLayer) -> None:
        projs = [_inner(p) for p in _projections(layer)]
        # Tensor parallelism: o and down are RowParallel; their communicator's all-reduce
        # runs at the same two points of the fused call (eligible() checked they share it).
        comm = layer.o_proj.comm if isinstance(layer.o_proj, RowParallel) else None
        self.all_reduce = comm.all_reduce if comm is not None else None
        # A shared-memory communicator's segment: the all-reduces stay native (comm_csrc.py).
        shm = ([], torch.empty(0, dtype=torch.long), 0.0, None)
        if comm is not None and hasattr(comm, "native_spec") and \
                os.environ.get("QUIRE_CPU_NATIVE_ALLREDUCE", "1") != "0":
            shm = comm.native_spec()
        self.attn: CpuAttention = layer.attn
        self.dtype = layer.input_layernorm.weight.dtype
        self.head_size = layer.head_size
        weights = [layer.input_layernorm.weight, layer.post_attention_layernorm.weight]
        ints: list[int] = []
        none = torch.empty(0)
        rows_call = (0, 0, 0)
        for p in projs:
            kind = _kind(p)
            if kind == _VNNI:
                weights += [p.packed, none, none]
                ints += [kind, 0, 0, p.out_features]
            else:
                weights += [p.qweight, p.scales, p.mins]
                ints += [kind, p.bits, p.group_size, p.out_features]
            if kind == _ROWS:
                rows_call = p.method.kernel.rows_call()
        # The rows kernel takes up to FUSED_ROWS rows a call; the others any number.
        self.max_rows = quant_native.FUSED_ROWS if _ROWS in ints[::4] else MAX_ROWS
        bias = layer.qkv_proj.bias
        weights.append(torch.empty(0, dtype=self.dtype) if bias is None else bias)
        ints += [layer.num_heads, layer.num_kv_heads, layer.head_size,
                 self.attn.sliding_window or 0, *rows_call]
        kernels = native.module()
        self.handle = kernels.decode_plan_new(
            weights, ints, layer.input_layernorm.eps, self.attn.scale,
            self.attn.soft_cap or 0.0, self.all_reduce, *shm)
        weakref.finalize(self, kernels.decode_plan_free, self.handle)

    def rows(self, x: torch.Tensor, cos: torch.Tensor, kv_cache: torch.Tensor,
             md: AttentionMetadata):
        """The native attention's rows when this step can run fused, else None."""
        if x.shape[0] > self.max_rows or x.dtype != self.dtype or x.dim() != 2 or \
                x.stride(1) != 1 or cos.dtype != torch.float32 or \
                cos.shape[-1] != self.head_size:
            return None
        return self.attn.native_decode_rows(kv_cache, md, x.shape[0])

    def __call__(self, x: torch.Tensor, rope: tuple[torch.Tensor, torch.Tensor],
                 kv_cache: torch.Tensor, md: AttentionMetadata) -> torch.Tensor | None:
        cos, sin = rope
        rows = self.rows(x, cos, kv_cache, md)
        if rows is None:
            return None
        return native.module().decode_layer(
            self.handle, x, cos.contiguous(), sin.contiguous(), kv_cache, md.slot_mapping,
            rows.block_tables, rows.seq_lens)


class FusedModel:
    """A model's whole stack of fused layers as one call (LlamaForCausalLM.layers_fast_path):
    for a step with one set of attention metadata for all layers (no per-layer KV groups)."""

    def __init__(self, layers: list[FusedDecode]) -> None:
        self.first = layers[0]
        self.handles = [layer.handle for layer in layers]

    def __call__(self, x: torch.Tensor, tables: list[tuple[torch.Tensor, torch.Tensor]],
                 kv_caches: list[torch.Tensor], md: AttentionMetadata) -> torch.Tensor | None:
        if md.layer_metadata is not None:
            return None
        cos, sin = tables[0]
        rows = self.first.rows(x, cos, kv_caches[0], md)
        if rows is None:
            return None
        return native.module().decode_layers(
            self.handles, x, cos.contiguous(), sin.contiguous(), kv_caches, md.slot_mapping,
            rows.block_tables, rows.seq_lens)


def eligible(layer: nn.Module) -> bool:
    """A dense (not MoE) Llama-family layer without q/k norms or sandwich norms, whose norms,
    activation and rotary are the native ones, whose four projections are packed (_packed;
    only qkv may have a bias; under tensor parallelism o and down wrapped in RowParallel with
    one communicator), and whose attention is the cpu backend's with a full-precision
    cache."""
    if not isinstance(layer, DecoderLayer) or layer.sandwich or layer.q_norm is not None or \
            not hasattr(layer, "gate_up_proj"):
        return False
    projs = _projections(layer)
    wrapped = [isinstance(p, RowParallel) for p in projs]
    if any(wrapped) and (wrapped != [False, True, False, True]
                         or projs[1].comm is not projs[3].comm):
        return False
    projs = [_inner(p) for p in projs]
    norms = [layer.input_layernorm, layer.post_attention_layernorm]
    return (all(type(n) is NativeRMSNorm for n in norms)
            and norms[0].weight.dtype in _DTYPES and norms[1].eps == norms[0].eps
            and type(layer.act) is NativeSiluAndMul and type(layer.rotary) is NativeApplyRotary
            and _packed(projs)
            and all(p.bias is None for p in projs[1:])
            and isinstance(layer.attn, CpuAttention) and layer.attn.kv_quant is None)


_LANES, _VNNI, _ROWS = 0, 1, 2  # the projection kinds decode_layer takes


def _projections(layer: DecoderLayer) -> list[nn.Module]:
    return [layer.qkv_proj, layer.o_proj, layer.gate_up_proj, layer.down_proj]


def _inner(p: nn.Module) -> nn.Module:
    """A RowParallel's own projection (its partial sum is what the kernel computes)."""
    return p.inner if isinstance(p, RowParallel) else p


def _kind(p: nn.Module) -> int | None:
    """Lanes-packed, or on the rows kernel (inputs in order, either way); or on the bf16 GEMM
    with whole panels (so the module path's output needs no narrowing); else None."""
    if type(p) is QuantLinear:
        kernel = getattr(p.method, "kernel", None)
        if p.perm.numel() or not isinstance(kernel, quant_native.CpuQuantKernel):
            return None
        if p.layout == quant_lanes.LAYOUT:
            return _LANES
        return _ROWS if p.layout == "" else None
    if type(p) is VnniLinear and not p.gated and p.out_features % 32 == 0:
        return _VNNI
    return None


def _packed(projs: list[nn.Module]) -> bool:
    kinds = [_kind(p) for p in projs]
    if any(k is None for k in kinds):
        return False
    calls = {p.method.kernel.rows_call() for p, k in zip(projs, kinds) if k == _ROWS}
    return len(calls) <= 1  # one rows kernel setting per layer


def install(model: nn.Module) -> int:
    """Give every eligible layer its fused decode path, and the model its whole-stack path
    when every layer got one and all attend alike; returns how many layers got one."""
    if os.environ.get("QUIRE_CPU_FUSED_LAYER", "1") == "0" or not native.available() or \
            not quant_native.available():
        return 0
    count = 0
    for module in model.modules():
        if eligible(module):
            module.fast_path = FusedDecode(module)
            count += 1
    layers = getattr(model, "layers", None)
    if hasattr(model, "layers_fast_path") and layers and \
            all(isinstance(layer.fast_path, FusedDecode) for layer in layers) and \
            all(layer.rope_index == 0 for layer in layers) and \
            len({layer.attn.sliding_window for layer in layers}) == 1:
        model.layers_fast_path = FusedModel([layer.fast_path for layer in layers])
    return count
