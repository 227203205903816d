"""Weight-only quantization for the torch family: the method contract, the registry plugins
extend (quire_register_quantization), and the layers a quantized checkpoint becomes.

A LinearMethod serves one linear layer through the life cycle vLLM's users know:
create_weights (the parameters for this shape) -> load_weights (the checkpoint's tensors)
-> process_after_loading (e.g. repack for the kernel) -> apply(x). Methods are chosen by
name: from the checkpoint (a GGUF file's tensor types: "gguf") or by --quantization.

The arithmetic of a step is left to a QuantKernel the backend supplies (the cpu backend's
native fused dequantize-dot); a backend without one gets no packed weights at all — they
are dequantized at load, with a log line naming the type.
"""

from __future__ import annotations

import logging
import re
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Iterator
from typing import Protocol

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from quire.backends.torch.models.moe import ExpertLinears, MoEExperts
from quire.models.quant import PackedExperts, PackedWeight, quantize_int8

logger = logging.getLogger(__name__)


class QuantKernel(Protocol):
    """A backend's packed-weight arithmetic. formats: the PackedWeight sources it runs
    ("Q4_1", ...)."""

    formats: frozenset[str]

    def matmul(self, x: torch.Tensor, layer: QuantLinear) -> torch.Tensor:
        """x [M, K] -> [M, N] in x's dtype."""

    def dequantize(self, layer: QuantLinear) -> torch.Tensor:
        """The layer's weight as a float32 [N, K] matrix."""

    # Optional: prepare(layer) -> None, called once after loading, may repack the layer's
    # buffers into the kernel's own layout and name it in layer.layout; such a kernel also
    # provides dequantize_rows(layer, ids) -> float32 [len(ids), K] (embedding lookups).


class QuantLinear(nn.Module):
    """y = x W^T (+ bias), W held packed by its LinearMethod."""

    def __init__(self, in_features: int, out_features: int, method: LinearMethod,
                 bias: torch.Tensor | None = None) -> None:
        super().__init__()
        self.in_features, self.out_features = in_features, out_features
        self.method = method
        self.bias = bias
        method.create_weights(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.method.apply(self, x)
        return y if self.bias is None else y + self.bias

    def extra_repr(self) -> str:
        return f"in={self.in_features}, out={self.out_features}, {self.method.describe(self)}"


class LinearMethod(ABC):
    """One linear layer's weight format (see the module docstring for the life cycle)."""

    name: str

    @abstractmethod
    def create_weights(self, layer: QuantLinear) -> None:
        """Register the (empty) parameters or buffers of layer's shape."""

    @abstractmethod
    def load_weights(self, layer: QuantLinear, weight: object) -> None:
        """Take the checkpoint's tensor(s) for this layer."""

    def process_after_loading(self, layer: QuantLinear) -> None:  # noqa: B027 (optional)
        """Repack for the kernel, once, after loading."""

    @abstractmethod
    def apply(self, layer: QuantLinear, x: torch.Tensor) -> torch.Tensor:
        """x [M, K] -> x W^T [M, N] in x's dtype."""

    def describe(self, layer: QuantLinear) -> str:
        return self.name


class PackedLinearMethod(LinearMethod):
    """quire.models.quant.PackedWeight (GGUF's Q4_0, Q4_1, Q5_0, Q5_1, Q8_0) run by the
    backend's QuantKernel."""

    name = "gguf"

    def __init__(self, kernel: QuantKernel) -> None:
        self.kernel = kernel

    def create_weights(self, layer: QuantLinear) -> None:
        layer.register_buffer("qweight", torch.empty(0, dtype=torch.uint8), persistent=False)
        layer.register_buffer("scales", torch.empty(0, dtype=torch.float16), persistent=False)
        layer.register_buffer("mins", torch.empty(0, dtype=torch.float16), persistent=False)
        # GPTQ act-order: the inputs in the order the weight stores them (empty: in order)
        layer.register_buffer("perm", torch.empty(0, dtype=torch.int64), persistent=False)
        layer.bits = layer.group_size = 0
        layer.source = ""
        layer.layout = ""  # the checkpoint's (PackedWeight's); a kernel's prepare may change it

    def load_weights(self, layer: QuantLinear, weight: object) -> None:
        assert isinstance(weight, PackedWeight)
        if weight.shape != (layer.out_features, layer.in_features):
            raise ValueError(f"packed weight {weight.shape} for a layer of "
                             f"{(layer.out_features, layer.in_features)}")
        # the kernels read row-major arrays
        layer.qweight = torch.from_numpy(np.ascontiguousarray(weight.qweight))
        layer.scales = torch.from_numpy(np.ascontiguousarray(weight.scales))
        layer.mins = torch.empty(0, dtype=layer.scales.dtype) if weight.mins is None else \
            torch.from_numpy(np.ascontiguousarray(weight.mins))
        layer.bits, layer.group_size, layer.source = weight.bits, weight.group_size, \
            weight.source
        if weight.perm is not None:
            layer.perm = torch.from_numpy(weight.perm.astype(np.int64))

    def process_after_loading(self, layer: QuantLinear) -> None:
        prepare = getattr(self.kernel, "prepare", None)
        if prepare is not None:
            prepare(layer)

    def apply(self, layer: QuantLinear, x: torch.Tensor) -> torch.Tensor:
        if layer.perm.numel():  # the kernels multiply the weight as stored
            x = x.index_select(-1, layer.perm)
        return self.kernel.matmul(x, layer)

    def describe(self, layer: QuantLinear) -> str:
        return f"{layer.source} ({layer.bits}-bit)"


class QuantEmbedding(nn.Module):
    """An embedding table kept packed: the rows a step looks up are dequantized."""

    def __init__(self, linear: QuantLinear, dtype: torch.dtype = torch.float32) -> None:
        super().__init__()
        self.table = linear
        self.dtype = dtype

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        w = dequantize_rows(self.table, ids)
        if self.table.perm.numel():  # back to the inputs' own order
            w = torch.empty_like(w).index_copy_(1, self.table.perm, w)
        return w.to(self.dtype)


def dequantize_rows(t: QuantLinear, ids: torch.Tensor) -> torch.Tensor:
    """Rows ids of a packed layer's weight, float32, inputs in stored order."""
    if t.layout:  # repacked by its kernel's prepare()
        return t.method.kernel.dequantize_rows(t, ids)
    q, s = t.qweight[ids], t.scales[ids].float()
    if t.bits == 4:
        q = torch.stack([q.view(len(ids), -1, 16) & 15, q.view(len(ids), -1, 16) >> 4], 2)
    w = q.reshape(len(ids), -1, t.group_size).float() * s.unsqueeze(-1)
    if t.mins.numel():
        w += t.mins[ids].float().unsqueeze(-1)
    return w.reshape(len(ids), -1)


# -- the registry ---------------------------------------------------------------------------
# name -> factory(kernel) -> LinearMethod. Plugins add theirs with quire_register_quantization.
# "int8": dense checkpoint weights quantized at load (quantize_dense), then served packed.
# "gptq", "awq": an HF checkpoint's quantized layers (quire.models.hf_quant), served packed.
METHODS: dict[str, Callable[[QuantKernel], LinearMethod]] = {
    "gguf": PackedLinearMethod, "int8": PackedLinearMethod, "gptq": PackedLinearMethod,
    "awq": PackedLinearMethod}


def quantize_dense(weights: Iterable[tuple[str, object]], group_size: int = 32
                   ) -> Iterator[tuple[str, object]]:
    """--quantization int8: every dense 2-D projection, embedding and lm_head weight whose
    input size is a multiple of group_size becomes an 8-bit PackedWeight (symmetric, one
    float16 scale per group), and so does each expert's projection (per-expert tensors, or a
    stacked [E, N, K] one as PackedExperts); the router and other tensors pass through."""
    for name, w in weights:
        if isinstance(w, torch.Tensor) and w.shape[-1] % group_size == 0:
            if w.dim() == 2 and (name.endswith(("proj.weight", "embed_tokens.weight",
                                                "lm_head.weight"))
                                 or _EXPERT_2D.search(name)):
                w = quantize_int8(w.float().numpy(), group_size)
            elif w.dim() == 3 and name.endswith((".experts.gate_up_proj",
                                                  ".experts.down_proj")):
                w = PackedExperts(tuple(quantize_int8(e.float().numpy(), group_size)
                                        for e in w))
        yield name, w


_EXPERT_2D = re.compile(r"\.experts\.\d+\.(w[123]|gate_proj|up_proj|down_proj)\.weight$")


class QuantMoEExperts(ExpertLinears):
    """A layer's experts kept packed: one QuantLinear per expert and projection (w13: gate |
    up, w2: down), run by the backend's kernel on each expert's grouped tokens."""

    @classmethod
    def packed_from(cls, module: MoEExperts, w13: PackedExperts, w2: PackedExperts,
                    method: LinearMethod) -> ExpertLinears:
        return cls.from_linears(module, [_quant_linear(w, method) for w in w13.experts],
                                [_quant_linear(w, method) for w in w2.experts])


def _quant_linear(weight: PackedWeight, method: LinearMethod) -> QuantLinear:
    layer = QuantLinear(weight.shape[1], weight.shape[0], method)
    method.load_weights(layer, weight)
    method.process_after_loading(layer)
    return layer


def quantize_modules(model: nn.Module, packed: dict[str, PackedWeight | PackedExperts],
                     method: LinearMethod, dtype: torch.dtype) -> int:
    """Swap the linear (and embedding) modules whose weights came packed (param name ->
    PackedWeight) for QuantLinear / QuantEmbedding, and experts whose two stacks came packed
    (PackedExperts) for QuantMoEExperts. A weight tied to another (embedding and lm_head)
    stays shared. Returns the bytes the packed weights take."""
    modules = dict(model.named_modules())
    by_param: dict[int, QuantLinear] = {}
    total = 0
    for param_name, weight in packed.items():
        owner_name = param_name.rsplit(".", 1)[0]
        owner = modules[owner_name]
        if isinstance(weight, PackedExperts):
            if param_name.endswith(".w13"):  # with its w2 (load_weights returns both)
                w2 = packed[owner_name + ".w2"]
                assert isinstance(w2, PackedExperts)
                _set(model, owner_name, QuantMoEExperts.packed_from(owner, weight, w2, method))
                total += weight.nbytes + w2.nbytes
            continue
        dense = owner.weight
        layer = QuantLinear(weight.shape[1], weight.shape[0], method,
                            getattr(owner, "bias", None))
        method.load_weights(layer, weight)
        method.process_after_loading(layer)
        total += weight.nbytes
        by_param[id(dense)] = layer
        _set(model, owner_name, QuantEmbedding(layer, dtype) if isinstance(owner, nn.Embedding)
             else layer)
    # Modules sharing a swapped parameter (tied lm_head) share the packed layer.
    for name, module in list(model.named_modules()):
        if isinstance(module, (nn.Linear, nn.Embedding)) and id(module.weight) in by_param:
            layer = by_param[id(module.weight)]
            _set(model, name, QuantEmbedding(layer, dtype) if isinstance(module, nn.Embedding)
                 else layer)
    return total


def dequantize_packed(weights: Iterable[tuple[str, object]], arch: str
                      ) -> Iterator[tuple[str, object]]:
    """For a model that takes dense tensors only: PackedWeight -> float32 tensor, with one log
    line."""
    told = False
    for name, w in weights:
        if isinstance(w, (PackedWeight, PackedExperts)):
            if not told:
                logger.info("model %s takes dense weights only: quantized tensors are "
                            "dequantized at load", arch)
                told = True
            w = torch.from_numpy(w.dequantize())
        yield name, w


def _set(model: nn.Module, name: str, module: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, child, module)


class TorchQuantKernel:
    """Portable arithmetic: dequantize, then a dense matmul (any torch device). Correct but
    not fast; backends bring a fused kernel."""

    formats = frozenset({"Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q8_0", "Q4_K", "Q5_K", "Q6_K",
                         "int8", "gptq", "awq"})

    def matmul(self, x: torch.Tensor, layer: QuantLinear) -> torch.Tensor:
        return F.linear(x, self.dequantize(layer).to(x.dtype))

    def dequantize(self, layer: QuantLinear) -> torch.Tensor:
        return dequantize_rows(layer, torch.arange(layer.out_features))
