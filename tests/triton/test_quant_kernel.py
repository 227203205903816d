"""The Triton weight-only GEMM (W4A16 / W8A16) against the dequantized reference, in
Triton's interpreter (on a GPU, the real thing): every PackedWeight flavour — GGUF blocks
(4-bit with mins, 8-bit, Q6_K's groups of 16), GPTQ act-order, AWQ — odd row counts, N not
a multiple of the tile; and a GPTQ folder end to end on triton-interpret."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from quire.backends.torch.quantization import PackedLinearMethod, QuantLinear
from quire.backends.triton.quant import TritonQuantKernel, quant_gemm
from quire.models import hf_quant, quant


def _packed(kind: str, n: int, k: int) -> quant.PackedWeight:
    rng = np.random.default_rng(n * k)
    w = rng.standard_normal((n, k)).astype(np.float32) * 0.05
    if kind == "int8":
        return quant.quantize_int8(w)
    if kind == "q6k-like":  # 8-bit values in groups of 16 with float32 scales
        q = rng.integers(-32, 32, (n, k)).astype(np.int8)
        return quant.PackedWeight(8, 16, q, rng.random((n, k // 16)).astype(np.float32) * 0.01,
                                  None, (n, k), "Q6_K")
    if kind == "q4_1-like":
        q = rng.integers(0, 256, (n, k // 2)).astype(np.uint8)
        s = (rng.random((n, k // 32)) * 0.01).astype(np.float16)
        return quant.PackedWeight(4, 32, q, s, (-8 * s).astype(np.float16), (n, k), "Q4_1")
    method, bits, desc_act = {"gptq4": ("gptq", 4, True), "gptq8": ("gptq", 8, False),
                              "awq": ("awq", 4, False)}[kind]
    qc = {"quant_method": method, "bits": bits, "group_size": 64}
    parts = hf_quant.quantize_gptq(w, bits, 64, desc_act, sym=False) if method == "gptq" \
        else hf_quant.quantize_awq(w, 64)
    return hf_quant.unpack(method, parts, qc)


@pytest.mark.parametrize("kind", ["q4_1-like", "int8", "q6k-like", "gptq4", "gptq8", "awq"])
@pytest.mark.parametrize("rows,n,k", [(1, 72, 128), (5, 96, 192), (19, 40, 64)])
def test_quant_gemm_matches_dequantized(device, kind, rows, n, k):
    pw = _packed(kind, n, k)
    layer = QuantLinear(k, n, PackedLinearMethod(TritonQuantKernel()))
    layer.method.load_weights(layer, pw)
    layer.to(device)
    x = torch.randn(rows, k, device=device)
    want = x.cpu() @ torch.from_numpy(pw.dequantize()).T
    torch.testing.assert_close(layer(x).cpu(), want, rtol=1e-4, atol=1e-4)
    x16 = x.to(torch.float16)  # W4A16 / W8A16 proper: half activations, fp32 accumulation
    got16 = layer(x16)
    assert got16.dtype == torch.float16
    torch.testing.assert_close(got16.float().cpu(), x16.float().cpu() @
                               torch.from_numpy(pw.dequantize()).T, rtol=2e-2, atol=2e-2)


def test_unsupported_layouts_are_refused():
    x = torch.randn(2, 64)
    with pytest.raises(ValueError, match="no Triton kernel for 4-bit weights in groups of 16"):
        quant_gemm(x, torch.zeros(4, 32, dtype=torch.uint8), torch.ones(4, 4), torch.empty(0),
                   4, 16)
    with pytest.raises(ValueError, match="multiple of 32"):
        quant_gemm(torch.randn(2, 48), torch.zeros(4, 48, dtype=torch.int8), torch.ones(4, 3),
                   torch.empty(0), 8, 16)


def test_gptq_folder_on_triton_interpret_equals_its_dequantized_reference(model_factory,
                                                                          tmp_path):
    if torch.cuda.is_available():
        pytest.skip("a GPU is present: the kernel tests above run the real path")
    from quire import LLM, SamplingParams
    from quire.testing.quantized_models import write_quantized

    src = model_factory("llama", hidden_size=128, intermediate_size=256)
    qdir, ref = str(tmp_path / "q"), str(tmp_path / "ref")
    write_quantized(src, qdir, "gptq", desc_act=True, group_size=64, reference=ref)
    params = SamplingParams(temperature=0, max_tokens=8, ignore_eos=True)
    prompts = ["one two three", "hello"]
    llm = LLM(qdir, backend="triton-interpret", dtype="float32", block_size=16, num_blocks=24)
    layers = [m for m in llm.engine.executor.model.modules() if isinstance(m, QuantLinear)]
    assert len(layers) == 8 and isinstance(layers[0].method.kernel, TritonQuantKernel)
    got = [o.outputs[0].token_ids for o in llm.generate(prompts, params, use_tqdm=False)]
    cpu = LLM(ref, dtype="float32", num_blocks=64)
    assert got == [o.outputs[0].token_ids for o in cpu.generate(prompts, params, use_tqdm=False)]


def test_packed_experts_on_triton_interpret(model_factory, tmp_path):
    """Q8_0 expert stacks of a GGUF Mixtral stay packed on triton-interpret (QuantMoEExperts
    over the Triton GEMM): tokens equal the cpu backend's on the same file."""
    if torch.cuda.is_available():
        pytest.skip("a GPU is present: the kernel tests above run the real path")
    from quire import LLM, SamplingParams
    from quire.backends.torch.quantization import QuantMoEExperts
    from tests.models.test_gguf_moe import write_moe_gguf

    model_dir = model_factory("mixtral")
    path = str(tmp_path / "q8.gguf")
    write_moe_gguf(model_dir, path, quant_experts=True)
    params = SamplingParams(temperature=0, max_tokens=6, ignore_eos=True)
    outs = []
    for backend in ("cpu", "triton-interpret"):
        llm = LLM(path, tokenizer=model_dir, backend=backend, dtype="float32", block_size=16,
                  num_blocks=24)
        assert any(isinstance(m, QuantMoEExperts) for m in llm.engine.executor.model.modules())
        outs.append([o.outputs[0].token_ids
                     for o in llm.generate(["hello world", "one"], params, use_tqdm=False)])
    assert outs[0] == outs[1]
