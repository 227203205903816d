"""--quantization int8 on the tpu backend (backends/tpu/int8.py): int8 weights with column
scales, weight-only by default or with per-token int8 activations in one int8 x int8 ->
int32 matmul (the MXU's native int8 mode). Checked against the dequantized reference: exact
where the inputs are representable, greedy decoding teacher-forced against the model whose
projections hold the dequantized int8 weights."""

from __future__ import annotations

import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from quire import LLM, SamplingParams
from quire.backends.tpu.int8 import (
    Int8Matrix,
    int8_linear,
    quantize_per_channel,
    quantize_rows,
)


def _representable(rng, t: int, k: int, n: int):
    """x rows and w columns that 8-bit symmetric quantization represents exactly: integers
    up to 127 (each row / column reaching 127) times power-of-two scales."""
    xi = rng.integers(-127, 128, (t, k)).astype(np.float32)
    xi[:, 0] = 127
    wi = rng.integers(-127, 128, (k, n)).astype(np.float32)
    wi[0, :] = -127
    xs = 2.0 ** rng.integers(-6, 3, (t, 1))
    ws = 2.0 ** rng.integers(-8, 0, (1, n))
    return (xi * xs).astype(np.float32), (wi * ws).astype(np.float32)


@pytest.mark.parametrize("t,k,n", [(1, 64, 96), (7, 160, 33), (16, 32, 256)])
def test_native_path_exact_on_representable_inputs(t, k, n):
    x, w = _representable(np.random.default_rng(t), t, k, n)
    m = Int8Matrix.from_dense(w, int8_activations=True)
    np.testing.assert_array_equal(np.asarray(m.qweight, np.float32) * np.asarray(m.scales), w)
    got = jax.jit(int8_linear)(jnp.asarray(x), m)
    np.testing.assert_array_equal(np.asarray(got), x.astype(np.float64) @ w)


def test_the_matmul_is_int8_by_int8_into_int32():
    x = jnp.ones((3, 64), jnp.bfloat16)
    m = Int8Matrix.from_dense(np.ones((64, 32), np.float32), int8_activations=True)
    dots = [e for e in jax.make_jaxpr(int8_linear)(x, m).eqns
            if e.primitive.name == "dot_general"]
    assert len(dots) == 1
    assert [v.aval.dtype for v in dots[0].invars] == [jnp.int8, jnp.int8]
    assert dots[0].outvars[0].aval.dtype == jnp.int32


def test_weight_only_equals_the_dequantized_matmul():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((5, 96)).astype(np.float32)
    w = rng.standard_normal((96, 40)).astype(np.float32)
    m = Int8Matrix.from_dense(w, int8_activations=False)
    dequantized = np.asarray(m.qweight, np.float32) * np.asarray(m.scales)
    np.testing.assert_allclose(np.asarray(int8_linear(jnp.asarray(x), m)), x @ dequantized,
                               rtol=1e-5, atol=1e-5)
    # Activation quantization adds at most half a step of each row's scale per input.
    a = int8_linear(jnp.asarray(x), Int8Matrix.from_dense(w, int8_activations=True))
    bound = np.abs(x).max(1, keepdims=True) / 254 * np.abs(dequantized).sum(0)
    assert (np.abs(np.asarray(a) - x @ dequantized) <= bound * 1.001 + 1e-5).all()


def test_quantizers_round_to_nearest_per_channel_and_per_row():
    w = np.array([[0.5, -1.0, 0.25], [0.0, 0.0, 0.0]], np.float32)
    q, s = quantize_per_channel(w)
    assert s.tolist() == [np.float32(1.0 / 127), 1.0]
    assert q.tolist() == [[64, -127, 32], [0, 0, 0]]
    xq, xs = quantize_rows(jnp.asarray(w))
    assert np.asarray(xq).tolist() == q.tolist()
    np.testing.assert_allclose(np.asarray(xs)[:, 0], s)


def _dequantized_copy(src: str, dst: str) -> str:
    """src with each layer projection replaced by its per-channel int8 version dequantized
    (embedding and head as they are): the weights --quantization int8 serves."""
    import torch
    import transformers

    shutil.copytree(src, dst)
    model = transformers.AutoModelForCausalLM.from_pretrained(src, dtype=torch.float32)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.dim() == 2 and name.endswith("proj.weight") and ".layers." in name:
                q, s = quantize_per_channel(p.numpy())
                p.copy_(torch.from_numpy(q.astype(np.float32) * s[:, None]))
    model.save_pretrained(dst)
    return dst


def test_greedy_follows_the_dequantized_reference(model_factory, tmp_path, monkeypatch):
    """Teacher-forced over 256 greedy tokens of the reference (each prefix as a prompt):
    weight-only (the default) picks the reference's next token at every step; with int8
    activations (the MXU's int8 x int8 mode) at >= 95% (measured 97.7% on this model: 8-bit
    activations move logits by ~2% here, and the random model's top two are that close at
    a few percent of steps)."""
    src = model_factory("llama", hidden_size=256, intermediate_size=512, num_heads=4,
                        num_kv_heads=2)
    ref_dir = _dequantized_copy(src, str(tmp_path / "dequantized"))
    kw = dict(backend="tpu", dtype="float32", num_blocks=256, max_num_batched_tokens=1024)
    steps, prompt = 256, [5, 9, 14, 3, 22, 7, 7, 30]
    tokens = LLM(ref_dir, **kw).generate(
        [{"prompt_token_ids": prompt}], SamplingParams(temperature=0, max_tokens=steps,
                                                       ignore_eos=True),
        use_tqdm=False)[0].outputs[0].token_ids
    one = SamplingParams(temperature=0, max_tokens=1, ignore_eos=True)
    prefixes = [{"prompt_token_ids": prompt + tokens[:i]} for i in range(steps)]

    def agreement(int8_activations: bool) -> float:
        llm = LLM(src, quantization="int8", **kw)
        qkv = llm.engine.executor.params["layers"][0]["qkv_proj.weight"]
        assert isinstance(qkv, Int8Matrix) and qkv.int8_activations == int8_activations
        outs = llm.generate(prefixes, one, use_tqdm=False)
        return sum(o.outputs[0].token_ids[0] == t for o, t in zip(outs, tokens)) / steps

    assert agreement(False) == 1.0
    monkeypatch.setenv("QUIRE_TPU_INT8_ACTIVATIONS", "1")
    assert agreement(True) >= 0.95


def test_int8_refuses_a_gptq_checkpoint_like_the_torch_family(tmp_path, model_factory):
    from quire.testing.quantized_models import write_quantized

    path = write_quantized(model_factory("llama"), str(tmp_path / "gptq"), "gptq", group_size=32)
    with pytest.raises(ValueError, match="does not match the checkpoint"):
        LLM(path, backend="tpu", dtype="float32", num_blocks=16, quantization="int8")
