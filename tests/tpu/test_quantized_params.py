"""Quantized weights in the JAX family: PackedWeight matrices stay quantized in the params
pytree (QuantMatrix) and are dequantized inside the jitted step; logits equal those of the
same weights dequantized at load."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from quire.backends.tpu import model as llama
from quire.models import quant
from quire.models.checkpoint import open_checkpoint
from quire.models.config import parse_arch_config

gguf_quants = pytest.importorskip("gguf.quants")
from gguf.constants import GGMLQuantizationType as T  # noqa: E402


def _quantized(weights, qtypes):
    """Each 2-D weight quantized, cycling over qtypes; (packed stream, dequantized stream)."""
    packed, dense = [], []
    i = 0
    for name, w in weights:
        if w.ndim == 2 and w.shape[1] % 32 == 0:
            qt = qtypes[i % len(qtypes)]
            i += 1
            pw = quant.from_gguf(gguf_quants.quantize(np.asarray(w, np.float32), qt), int(qt),
                                 w.shape)
            packed.append((name, pw))
            dense.append((name, pw.dequantize()))
        else:
            packed.append((name, w))
            dense.append((name, w))
    return packed, dense


@pytest.mark.parametrize("qtypes", [(T.Q8_0,), (T.Q4_1, T.Q4_0), (T.Q5_0, T.Q8_0, T.Q4_1)])
def test_quantized_params_match_dequantized(model_factory, qtypes):
    path = model_factory("llama", tie_word_embeddings=True)
    raw, weights = open_checkpoint(path)
    cfg = parse_arch_config(raw, "LlamaForCausalLM")
    packed, dense = _quantized(list(weights), qtypes)
    qp = llama.load_params(cfg, packed, jnp.float32)
    dp = llama.load_params(cfg, dense, jnp.float32)
    if len(qtypes) == 1:  # one format: every matrix stays quantized, tied head included
        assert isinstance(qp["layers"][0]["qkv_proj.weight"], llama.QuantMatrix)
        assert qp["lm_head"] is qp["embed"]
    hidden = jax.random.normal(jax.random.key(0), (5, cfg.hidden_size))
    np.testing.assert_allclose(llama.compute_logits(qp, hidden),
                               llama.compute_logits(dp, hidden), rtol=1e-4, atol=1e-3)
    ids = jnp.array([3, 7, 7, 100])
    embed = qp["embed"]
    rows = embed.rows(ids, jnp.float32) if isinstance(embed, llama.QuantMatrix) \
        else embed[ids]
    np.testing.assert_allclose(rows, dp["embed"][ids], rtol=1e-6)
    # Inside jit, through a layer's matmul.
    w = qp["layers"][0]["gate_up_proj.weight"]
    x = jax.random.normal(jax.random.key(1), (3, cfg.hidden_size))
    np.testing.assert_allclose(jax.jit(llama.linear)(x, w),
                               x @ dp["layers"][0]["gate_up_proj.weight"], rtol=1e-4,
                               atol=1e-4)


@pytest.mark.parametrize("method,opts", [("gptq", {"desc_act": True, "group_size": 32}),
                                         ("awq", {"group_size": 64})])
def test_gptq_awq_folders_greedy_equal_their_dequantized_reference(model_factory, tmp_path,
                                                                   method, opts):
    """A GPTQ (act-order) / AWQ folder served on the tpu backend, its matrices kept quantized
    (act-order ones gather x's columns inside the jitted matmul), gives the greedy tokens of
    the dense folder of the same weights dequantized."""
    from quire import LLM, SamplingParams
    from quire.testing.quantized_models import write_quantized

    src = model_factory("llama", hidden_size=128, intermediate_size=256)
    qdir, ref = str(tmp_path / "q"), str(tmp_path / "ref")
    write_quantized(src, qdir, method, reference=ref, **opts)
    params = SamplingParams(temperature=0, max_tokens=12, ignore_eos=True)
    prompts = ["one two three", "the cache serves", "hello"]
    tpu = LLM(qdir, backend="tpu", dtype="float32", block_size=16, num_blocks=32)
    layer = tpu.engine.executor.params["layers"][0]
    assert isinstance(layer["qkv_proj.weight"], llama.QuantMatrix)
    assert (layer["qkv_proj.weight"].perm is not None) == bool(opts.get("desc_act"))
    cpu = LLM(ref, dtype="float32", num_blocks=64)
    assert [o.outputs[0].token_ids for o in tpu.generate(prompts, params, use_tqdm=False)] == \
        [o.outputs[0].token_ids for o in cpu.generate(prompts, params, use_tqdm=False)]
