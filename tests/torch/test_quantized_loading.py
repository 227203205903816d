"""Packed (quantized) checkpoint tensors through a model's load_weights: shards of fused
parameters stay packed when their formats agree, and are dequantized into the dense
parameter when they differ (Q4_K_M files mix Q4_K and Q6_K in q/k/v)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from quire.backends.cpu.attention import CpuAttention
from quire.backends.torch.loader import open_checkpoint
from quire.backends.torch.models.llama import LlamaForCausalLM
from quire.models import quant
from quire.models.config import parse_arch_config
from tests.models.test_quant import _random_k_blocks

gguf_quants = pytest.importorskip("gguf.quants")
from gguf.constants import GGMLQuantizationType as T  # noqa: E402


def _packed_like(w: torch.Tensor, qtype) -> quant.PackedWeight:
    n, k = w.shape
    if qtype in (T.Q4_K, T.Q6_K):
        return quant.from_gguf(_random_k_blocks(qtype, n, k, seed=n), int(qtype), (n, k))
    return quant.from_gguf(gguf_quants.quantize(w.numpy(), qtype), int(qtype), (n, k))


@pytest.mark.parametrize("formats, fused", [((T.Q8_0, T.Q8_0, T.Q8_0), True),
                                            ((T.Q4_K, T.Q4_K, T.Q6_K), False)])
def test_fused_shards_stay_packed_only_when_formats_agree(model_factory, formats, fused):
    path = model_factory("llama", hidden_size=256, intermediate_size=512, num_heads=4,
                         num_kv_heads=2)
    raw, weights = open_checkpoint(path)
    cfg = parse_arch_config(raw, "LlamaForCausalLM")
    model = LlamaForCausalLM(cfg, CpuAttention, 64)
    names = {f"model.layers.0.self_attn.{p}_proj.weight": t
             for p, t in zip("qkv", formats)}
    given = {}

    def stream():
        for name, w in weights:
            if name in names:
                given[name] = _packed_like(w, names[name])
                yield name, given[name]
            else:
                yield name, w

    packed = model.load_weights(stream())
    if fused:
        assert list(packed) == ["layers.0.qkv_proj.weight"]
        want = np.concatenate([given[n].dequantize() for n in names])
        np.testing.assert_array_equal(packed["layers.0.qkv_proj.weight"].dequantize(), want)
    else:
        assert not packed
        dense = model.layers[0].qkv_proj.weight.detach().numpy()
        want = np.concatenate([given[n].dequantize() for n in names])
        np.testing.assert_allclose(dense, want, rtol=1e-6)
