"""GGUF files of Gemma 2, Gemma 3 and Phi-3, laid out as llama.cpp's converter writes them
(Gemma's norms stored as 1 + w and its sandwich norms' names; Phi-3's fused attn_qkv and
gate-then-up ffn_up, LongRoPE factors as rope_factors_* tensors), written here from random HF
models with the `gguf` package: quire's greedy output equals the HF folder's."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
from safetensors.numpy import load_file

from quire import LLM
from tests.models.test_gguf_moe import add_dimensions, finish, greedy

PROMPTS = ["Hello world", "the scheduler serves paged attention blocks to every request, "
           "one two three four five six seven"]  # longer than the tiny sliding windows


def write_gguf(model_dir: str, path: str, pattern_key: bool = True) -> None:
    import gguf

    cfg = json.load(open(os.path.join(model_dir, "config.json")))
    t = load_file(os.path.join(model_dir, "model.safetensors"))
    mt = cfg["model_type"]
    arch = {"gemma2": "gemma2", "gemma3_text": "gemma3", "phi3": "phi3"}[mt]
    gemma = arch != "phi3"
    w = gguf.GGUFWriter(path, arch)
    n = cfg["num_hidden_layers"]
    head = cfg.get("head_dim") or cfg["hidden_size"] // cfg["num_attention_heads"]
    add_dimensions(w, cfg)
    if gemma:
        w.add_key_length(head)
        w.add_value_length(head)
        w.add_sliding_window(cfg["sliding_window"])
        if cfg["query_pre_attn_scalar"] != head:
            w.add_float32(f"{arch}.attention.scale", cfg["query_pre_attn_scalar"] ** -0.5)
    if arch == "gemma2":
        w.add_float32("gemma2.attn_logit_softcapping", cfg["attn_logit_softcapping"])
        w.add_float32("gemma2.final_logit_softcapping", cfg["final_logit_softcapping"])
    if arch == "gemma3":
        full = cfg["rope_parameters"]["full_attention"]
        w.add_rope_freq_base(full["rope_theta"])
        if full.get("rope_type") == "linear":
            w.add_string("gemma3.rope.scaling.type", "linear")
            w.add_float32("gemma3.rope.scaling.factor", full["factor"])
        if pattern_key:
            w.add_uint32("gemma3.attention.sliding_window_pattern",
                         cfg["layer_types"].index("full_attention") + 1)
    if arch == "phi3":
        rope = cfg["rope_parameters"]
        w.add_rope_freq_base(rope["rope_theta"])
        w.add_rope_dimension_count(int(head * rope["partial_rotary_factor"]))
        w.add_uint32("phi3.rope.scaling.original_context_length",
                     cfg["original_max_position_embeddings"])
        w.add_tensor("rope_factors_long.weight", np.asarray(rope["long_factor"], np.float32))
        w.add_tensor("rope_factors_short.weight", np.asarray(rope["short_factor"], np.float32))

    def norm(x):  # llama.cpp bakes Gemma's 1 + w into the file
        return x + 1 if gemma else x

    w.add_tensor("token_embd.weight", t["model.embed_tokens.weight"])
    w.add_tensor("output_norm.weight", norm(t["model.norm.weight"]))
    if "lm_head.weight" in t:
        w.add_tensor("output.weight", t["lm_head.weight"])
    for i in range(n):
        hf, blk = f"model.layers.{i}.", f"blk.{i}."
        w.add_tensor(blk + "attn_norm.weight", norm(t[hf + "input_layernorm.weight"]))
        w.add_tensor(blk + "attn_output.weight", t[hf + "self_attn.o_proj.weight"])
        w.add_tensor(blk + "ffn_down.weight", t[hf + "mlp.down_proj.weight"])
        if gemma:
            w.add_tensor(blk + "post_attention_norm.weight",
                         norm(t[hf + "post_attention_layernorm.weight"]))
            w.add_tensor(blk + "ffn_norm.weight", norm(t[hf + "pre_feedforward_layernorm.weight"]))
            w.add_tensor(blk + "post_ffw_norm.weight",
                         norm(t[hf + "post_feedforward_layernorm.weight"]))
            for p in "qkv":
                w.add_tensor(blk + f"attn_{p}.weight", t[hf + f"self_attn.{p}_proj.weight"])
            for p in ("gate", "up"):
                w.add_tensor(blk + f"ffn_{p}.weight", t[hf + f"mlp.{p}_proj.weight"])
            if arch == "gemma3":
                w.add_tensor(blk + "attn_q_norm.weight", norm(t[hf + "self_attn.q_norm.weight"]))
                w.add_tensor(blk + "attn_k_norm.weight", norm(t[hf + "self_attn.k_norm.weight"]))
        else:
            w.add_tensor(blk + "ffn_norm.weight", t[hf + "post_attention_layernorm.weight"])
            w.add_tensor(blk + "attn_qkv.weight", t[hf + "self_attn.qkv_proj.weight"])
            w.add_tensor(blk + "ffn_up.weight", t[hf + "mlp.gate_up_proj.weight"])
    finish(w)


@pytest.mark.parametrize("arch,kwargs", [
    ("gemma2", {}), ("gemma3", {}), ("phi3", {}),
    ("gemma3", {"num_layers": 6, "layer_types": None}),  # llama.cpp's default: 5 local, 1 global
])
def test_gguf_equals_its_hf_folder(model_factory, tmp_path, arch, kwargs):
    model_dir = model_factory(arch, **kwargs)
    path = str(tmp_path / f"{arch}.gguf")
    write_gguf(model_dir, path, pattern_key=not kwargs)
    llm = LLM(path, tokenizer=model_dir, dtype="float32", block_size=16)
    assert llm.engine.model_info.architecture == {
        "gemma2": "Gemma2ForCausalLM", "gemma3": "Gemma3ForCausalLM",
        "phi3": "Phi3ForCausalLM"}[arch]
    assert greedy(path, model_dir, PROMPTS) == greedy(model_dir, model_dir, PROMPTS)
