"""GPTQ and AWQ folders served packed on the cpu backend: the kernel against the
dequantized reference (act-order, float16 and float32 scales, odd row counts), and greedy
output equal to the dense folder of the dequantized weights, with the weights kept at about
their quantized size."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from quire import LLM, SamplingParams
from quire.backends.torch.quantization import PackedLinearMethod, QuantLinear, TorchQuantKernel
from quire.models import hf_quant
from quire.testing.quantized_models import write_quantized

PROMPTS = ["one two three", "the cache serves", "hello world", "paris is"]
PARAMS = SamplingParams(temperature=0, max_tokens=24, ignore_eos=True)


def _kernels():
    from quire.backends.cpu import quant_native

    kernels = [TorchQuantKernel()]
    if quant_native.available():
        kernels += [quant_native.CpuQuantKernel(), quant_native.CpuQuantKernel(portable=True)]
    return kernels


@pytest.mark.parametrize("method,bits,group,desc_act,sym", [
    ("gptq", 4, 128, True, True), ("gptq", 4, 64, False, False), ("gptq", 8, 32, True, False),
    ("awq", 4, 128, False, False), ("awq", 4, 32, False, False)])
@pytest.mark.parametrize("rows", [1, 3, 17, 40])
def test_kernels_match_the_dequantized_reference(method, bits, group, desc_act, sym, rows):
    w = np.random.default_rng(rows).standard_normal((72, 384)).astype(np.float32) * 0.05
    qc = {"quant_method": method, "bits": bits, "group_size": group}
    parts = hf_quant.quantize_gptq(w, bits, group, desc_act, sym) if method == "gptq" \
        else hf_quant.quantize_awq(w, group)
    want_w = torch.from_numpy(hf_quant.dequantize_reference(method, parts, qc))
    x = torch.randn(rows, 384)
    for kernel in _kernels():
        m = PackedLinearMethod(kernel)
        layer = QuantLinear(384, 72, m)
        m.load_weights(layer, hf_quant.unpack(method, parts, qc))
        torch.testing.assert_close(layer(x), x @ want_w.T, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("method,opts", [("gptq", {"desc_act": True, "group_size": 32}),
                                         ("gptq", {"bits": 8, "group_size": 64}),
                                         ("awq", {"group_size": 64})])
def test_greedy_equals_the_dequantized_folder(model_factory, tmp_path, method, opts):
    src = model_factory("llama", hidden_size=128, intermediate_size=256)
    qdir, ref = str(tmp_path / "q"), str(tmp_path / "ref")
    write_quantized(src, qdir, method, reference=ref, **opts)
    quantized = LLM(qdir, dtype="float32", num_blocks=64)
    dense = LLM(ref, dtype="float32", num_blocks=64)
    got = [o.outputs[0].token_ids for o in quantized.generate(PROMPTS, PARAMS, use_tqdm=False)]
    want = [o.outputs[0].token_ids for o in dense.generate(PROMPTS, PARAMS, use_tqdm=False)]
    assert got == want
    layers = [m for m in quantized.engine.executor.model.modules()
              if isinstance(m, QuantLinear)]
    # 2 layers x (fused qkv, o, fused gate_up, down), all kept packed
    assert len(layers) == 2 * 4 and all(m.source == method for m in layers)
    if opts.get("desc_act"):
        assert all(m.perm.numel() == m.in_features for m in layers)
    packed = sum(m.qweight.nbytes + m.scales.nbytes + m.mins.nbytes for m in layers)
    dense_bytes = sum(m.in_features * m.out_features for m in layers) * 2  # as bf16
    assert packed < (0.65 if opts.get("bits", 4) == 8 else 0.45) * dense_bytes
    # --quantization none: the same folder dequantized at load, the same tokens
    plain = LLM(qdir, dtype="float32", num_blocks=64, quantization="none")
    assert [o.outputs[0].token_ids
            for o in plain.generate(PROMPTS, PARAMS, use_tqdm=False)] == want


def test_quantization_flag_must_match_the_checkpoint(model_factory, tmp_path):
    src = model_factory("llama", hidden_size=128, intermediate_size=256)
    qdir = write_quantized(src, str(tmp_path / "q"), "awq", group_size=64)
    with pytest.raises(ValueError, match="does not match the checkpoint, which is AWQ"):
        LLM(qdir, dtype="float32", num_blocks=64, quantization="gptq")
    with pytest.raises(ValueError, match="not GPTQ or AWQ"):
        LLM(src, dtype="float32", num_blocks=64, quantization="awq")


def test_act_order_gptq_under_tensor_parallelism(model_factory, tmp_path):
    """TP=2 on an act-order GPTQ folder: column-parallel layers keep their packed rows (and
    order), row-parallel ones split the inputs of the weight dequantized; tokens equal TP=1."""
    src = model_factory("llama", hidden_size=128, intermediate_size=256)
    qdir = write_quantized(src, str(tmp_path / "q"), "gptq", desc_act=True, group_size=32)
    one = LLM(qdir, dtype="float32", num_blocks=64)
    want = [o.outputs[0].token_ids for o in one.generate(PROMPTS, PARAMS, use_tqdm=False)]
    two = LLM(qdir, dtype="float32", num_blocks=64, tensor_parallel_size=2)
    try:
        assert [o.outputs[0].token_ids
                for o in two.generate(PROMPTS, PARAMS, use_tqdm=False)] == want
    finally:
        two.engine.shutdown()


@pytest.mark.parametrize("arch", ["mixtral", "qwen3_moe"])
def test_gptq_experts_stay_packed(model_factory, tmp_path, arch):
    """A GPTQ mixture of experts (per-expert layers, act-order shared by the experts that
    read one input): each layer's experts become one QuantMoEExperts (w1 | w3 fused per
    expert); greedy output equals the dequantized folder."""
    from quire.backends.torch.quantization import QuantMoEExperts

    src = model_factory(arch, **({"moe_intermediate_size": 64} if arch == "qwen3_moe" else {}))
    qdir, ref = str(tmp_path / "q"), str(tmp_path / "ref")
    write_quantized(src, qdir, "gptq", reference=ref, desc_act=True, group_size=32)
    quantized = LLM(qdir, dtype="float32", num_blocks=64)
    moe = [m for m in quantized.engine.executor.model.modules()
           if isinstance(m, QuantMoEExperts)]
    assert len(moe) == (2 if arch == "mixtral" else 1)  # qwen3_moe: layer 1 is dense
    assert all(m.up[0].source == "gptq" and m.up[0].perm.numel() for m in moe)
    want = [o.outputs[0].token_ids for o in LLM(ref, dtype="float32", num_blocks=64).generate(
        PROMPTS, PARAMS, use_tqdm=False)]
    assert [o.outputs[0].token_ids
            for o in quantized.generate(PROMPTS, PARAMS, use_tqdm=False)] == want


def test_layers_the_kernels_cannot_take_come_dense(model_factory, tmp_path, caplog):
    """Qwen3-MoE's tiny experts have 48 inputs (not a multiple of 32): those layers are
    dequantized at load with a log line, the rest stay packed, tokens equal the reference."""
    src = model_factory("qwen3_moe")
    qdir, ref = str(tmp_path / "q"), str(tmp_path / "ref")
    write_quantized(src, qdir, "gptq", reference=ref, group_size=32)
    with caplog.at_level("INFO"):
        quantized = LLM(qdir, dtype="float32", num_blocks=64)
    assert "GPTQ layers dequantized at load where packing cannot keep them" in caplog.text
    assert any(isinstance(m, QuantLinear) for m in quantized.engine.executor.model.modules())
    want = [o.outputs[0].token_ids for o in LLM(ref, dtype="float32", num_blocks=64).generate(
        PROMPTS, PARAMS, use_tqdm=False)]
    assert [o.outputs[0].token_ids
            for o in quantized.generate(PROMPTS, PARAMS, use_tqdm=False)] == want
