"""--quantization int8: a dense checkpoint's projections, embedding and head quantized to 8
bits at load and run packed by the cpu kernel; greedy output equals the dense model whose
weights are those 8-bit weights dequantized (the reference), and the weights take about half
of bf16's memory."""

from __future__ import annotations

import shutil

import torch

from quire import LLM, SamplingParams
from quire.models.quant import quantize_int8

PROMPTS = ["one two three", "the cache serves", "hello world", "paris is"]


def _dequantized_copy(src: str, dst: str) -> str:
    """src with every weight --quantization int8 quantizes replaced by its 8-bit version
    dequantized: projections, embedding, head, and each expert of a stacked (in-memory)
    experts parameter. The reference the int8 path must equal."""
    import transformers

    shutil.copytree(src, dst)
    model = transformers.AutoModelForCausalLM.from_pretrained(src, dtype=torch.float32)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.dim() == 2 and name.endswith(("proj.weight", "embed_tokens.weight",
                                               "lm_head.weight")):
                p.copy_(torch.from_numpy(quantize_int8(p.numpy()).dequantize()))
            elif p.dim() == 3:  # stacked experts: each expert's rows
                for e in range(p.shape[0]):
                    p[e].copy_(torch.from_numpy(quantize_int8(p[e].numpy()).dequantize()))
    model.save_pretrained(dst)
    return dst


def test_int8_equals_its_dequantized_reference(model_factory, tmp_path):

    src = model_factory("llama", hidden_size=128, intermediate_size=256)
    ref_dir = _dequantized_copy(src, str(tmp_path / "dequantized"))
    params = SamplingParams(temperature=0, max_tokens=24, ignore_eos=True)
    int8 = LLM(src, dtype="float32", num_blocks=64, quantization="int8")
    ref = LLM(ref_dir, dtype="float32", num_blocks=64)
    got = [o.outputs[0].token_ids for o in int8.generate(PROMPTS, params, use_tqdm=False)]
    want = [o.outputs[0].token_ids for o in ref.generate(PROMPTS, params, use_tqdm=False)]
    assert got == want
    layers = [m for m in int8.engine.executor.model.modules()
              if type(m).__name__ == "QuantLinear"]
    # 2 layers x 4 projections, the lm_head and the (untied) embedding table.
    assert len(layers) == 2 * 4 + 2 and all(m.source == "int8" for m in layers)
    packed = sum(m.qweight.nbytes + m.scales.nbytes for m in layers)
    dense = sum(m.in_features * m.out_features for m in layers) * 2  # bf16 bytes
    assert packed < 0.6 * dense


def test_int8_experts_stay_packed(model_factory, tmp_path):
    """--quantization int8 on a Mixtral: each expert's projections are quantized too and run
    packed (QuantMoEExperts); greedy output equals the model whose experts (and projections,
    embedding, head) hold those 8-bit weights dequantized. The router stays dense."""

    from quire.backends.torch.quantization import QuantMoEExperts

    src = model_factory("mixtral")
    ref_dir = _dequantized_copy(src, str(tmp_path / "dequantized"))
    params = SamplingParams(temperature=0, max_tokens=16, ignore_eos=True)
    int8 = LLM(src, dtype="float32", num_blocks=64, quantization="int8")
    moe = [m for m in int8.engine.executor.model.modules() if isinstance(m, QuantMoEExperts)]
    assert len(moe) == 2 and all(m.up[0].source == "int8" for m in moe)
    ref = LLM(ref_dir, dtype="float32", num_blocks=64)
    assert [o.outputs[0].token_ids for o in int8.generate(PROMPTS, params, use_tqdm=False)] \
        == [o.outputs[0].token_ids for o in ref.generate(PROMPTS, params, use_tqdm=False)]
