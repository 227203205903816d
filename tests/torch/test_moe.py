"""Mixture of experts in the torch family: the fused MoE against a plain per-token loop,
routing, both checkpoint layouts; and the LongRoPE tables against HF's."""

from __future__ import annotations

import json
import os

import pytest
import torch
from safetensors.torch import load_file, save_file

from quire import LLM, SamplingParams
from quire.backends.torch.models.moe import fused_moe, gated, route


def per_token_moe(x, w13, w2, weights, ids, act):
    out = torch.zeros_like(x)
    for t in range(x.shape[0]):
        for j in range(ids.shape[1]):
            e = int(ids[t, j])
            h = gated(w13[e] @ x[t], act)
            out[t] += weights[t, j] * (w2[e] @ h)
    return out


@pytest.mark.parametrize("num_tokens,top_k,act", [(1, 1, "silu"), (7, 2, "silu"),
                                                   (33, 2, "gelu_tanh"), (5, 3, "silu")])
def test_fused_moe_matches_per_token_loop(num_tokens, top_k, act):
    g = torch.Generator().manual_seed(num_tokens)
    experts, hidden, inter = 6, 16, 24
    x = torch.randn(num_tokens, hidden, generator=g)
    w13 = torch.randn(experts, 2 * inter, hidden, generator=g) / 4
    w2 = torch.randn(experts, hidden, inter, generator=g) / 4
    # Routing that leaves expert 5 without tokens and gives expert 4 exactly one.
    logits = torch.randn(num_tokens, experts, generator=g)
    logits[:, 5] = -1e9
    logits[:, 4] = -1e9
    logits[0, 4] = 10.0
    weights, ids = route(logits, top_k, renormalize=True)
    counts = torch.bincount(ids.reshape(-1), minlength=experts)
    assert counts[5] == 0 and counts[4] == 1
    got = fused_moe(x, w13, w2, weights, ids, act)
    torch.testing.assert_close(got, per_token_moe(x, w13, w2, weights, ids, act),
                               rtol=1e-4, atol=1e-4)


def test_route_renormalizes_only_when_asked():
    logits = torch.tensor([[2.0, 1.0, 0.0, -1.0]])
    w, ids = route(logits, 2, renormalize=True)
    assert ids.tolist() == [[0, 1]]
    torch.testing.assert_close(w.sum(), torch.tensor(1.0))
    w_raw, _ = route(logits, 2, renormalize=False)
    torch.testing.assert_close(w_raw, torch.softmax(logits, -1)[:, :2])


def _stack_experts(src: str, dst: str) -> None:
    """Rewrite a per-expert Mixtral checkpoint in the stacked layout transformers 5 holds in
    memory (mlp.experts.gate_up_proj [E, 2I, H], mlp.experts.down_proj [E, H, I])."""
    os.makedirs(dst)
    for name in os.listdir(src):
        if not name.endswith(".safetensors"):
            with open(os.path.join(src, name), "rb") as f, \
                    open(os.path.join(dst, name), "wb") as g:
                g.write(f.read())
    tensors = load_file(os.path.join(src, "model.safetensors"))
    config = json.load(open(os.path.join(src, "config.json")))
    out = {}
    for name, t in tensors.items():
        if ".experts." not in name and ".gate." not in name:
            out[name] = t
    for i in range(config["num_hidden_layers"]):
        p = f"model.layers.{i}.block_sparse_moe"
        n = config["num_local_experts"]
        out[f"model.layers.{i}.mlp.gate.weight"] = tensors[f"{p}.gate.weight"]
        out[f"model.layers.{i}.mlp.experts.gate_up_proj"] = torch.stack([torch.cat([
            tensors[f"{p}.experts.{e}.w1.weight"], tensors[f"{p}.experts.{e}.w3.weight"]])
            for e in range(n)])
        out[f"model.layers.{i}.mlp.experts.down_proj"] = torch.stack(
            [tensors[f"{p}.experts.{e}.w2.weight"] for e in range(n)])
    save_file(out, os.path.join(dst, "model.safetensors"))


def test_stacked_and_per_expert_checkpoints_agree(model_factory, tmp_path):
    src = model_factory("mixtral")
    stacked = str(tmp_path / "stacked")
    _stack_experts(src, stacked)
    params = SamplingParams(temperature=0, max_tokens=10, ignore_eos=True)
    prompts = ["Hello world", "one two three four five six"]
    a = LLM(src, dtype="float32", block_size=16).generate(prompts, params, use_tqdm=False)
    b = LLM(stacked, dtype="float32", block_size=16).generate(prompts, params, use_tqdm=False)
    assert [o.outputs[0].token_ids for o in a] == [o.outputs[0].token_ids for o in b]


def test_missing_expert_is_named(model_factory, tmp_path):
    src = model_factory("mixtral")
    dst = tmp_path / "broken"
    _stack_experts(src, str(dst))
    tensors = load_file(str(dst / "model.safetensors"))
    del tensors["model.layers.1.mlp.experts.down_proj"]
    save_file(tensors, str(dst / "model.safetensors"))
    with pytest.raises(ValueError, match=r"missing tensors: \['layers.1.experts.w2'"):
        LLM(str(dst), dtype="float32", block_size=16)


def test_longrope_tables_match_hf_on_both_sides_of_the_switch(model_factory):
    """quire's LongRoPE tables equal HF's rotary embedding with the short factors below
    original_max and with the long ones above it (HF switches per sequence length)."""
    from transformers import AutoConfig
    from transformers.models.phi3.modeling_phi3 import Phi3RotaryEmbedding

    from quire.backends.torch.rope import RotaryEmbedding
    from quire.models.config import parse_arch_config
    from quire.models.rope import rope_spec

    model_dir = model_factory("phi3")
    raw = json.load(open(os.path.join(model_dir, "config.json")))
    cfg = parse_arch_config(raw, "Phi3ForCausalLM")
    ours = RotaryEmbedding(rope_spec(cfg.rotary_dim, cfg.rope_theta, cfg.rope_scaling), 256)
    hf = Phi3RotaryEmbedding(AutoConfig.from_pretrained(model_dir))
    x = torch.zeros(1, 1, cfg.hidden_size)
    original = raw["original_max_position_embeddings"]
    for length in (original // 2, original, original + 40):
        positions = torch.arange(length)
        hf_cos, hf_sin = hf(x, positions[None])
        cos, sin = ours.table(positions)
        tail = slice(original, None) if length > original else slice(None)
        torch.testing.assert_close(cos[tail], hf_cos[0][tail])
        torch.testing.assert_close(sin[tail], hf_sin[0][tail])
    assert ours.long is not None and cfg.rotary_dim < cfg.head_size  # partial rotary


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("num_tokens,top_k,renormalize", [(1, 1, True), (9, 2, True),
                                                          (70, 2, False), (6, 3, True)])
def test_cpu_native_moe_layer_matches_torch_path(dtype, num_tokens, top_k, renormalize):
    """The cpu backend's one-call MoE layer (routing, grouping and packed experts in C++)
    equals the reference layer; 70 tokens give some experts more rows than oneDNN's exact
    shapes (padded), and expert 5 gets none."""
    from quire.backends.cpu import native
    from quire.backends.cpu.linear import onednn_available
    from quire.backends.cpu.moe import CpuMoEExperts
    from quire.backends.torch.models.moe import MoEExperts

    if not (native.available() and onednn_available(dtype)):
        pytest.skip("native kernels or oneDNN unavailable here")
    g = torch.Generator().manual_seed(num_tokens)
    ref = MoEExperts(6, 32, 40, top_k, renormalize, "silu")
    with torch.no_grad():
        ref.w13.copy_(torch.randn(ref.w13.shape, generator=g) / 4)
        ref.w2.copy_(torch.randn(ref.w2.shape, generator=g) / 4)
    ref = ref.to(dtype)
    ours = CpuMoEExperts.packed_from(ref)
    x = torch.randn(num_tokens, 32, generator=g).to(dtype)
    logits = torch.randn(num_tokens, 6, generator=g).to(dtype)
    logits[:, 5] = -30.0
    with torch.no_grad():
        got, want = ours(x, logits), ref(x, logits)
    tol = 1e-5 if dtype == torch.float32 else 2e-2
    torch.testing.assert_close(got.float(), want.float(), atol=tol, rtol=tol)
