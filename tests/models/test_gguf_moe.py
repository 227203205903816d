"""GGUF mixture-of-experts files (llama.cpp's layout: the router as ffn_gate_inp, the
experts stacked in 3-D ffn_{gate,up,down}_exps tensors) for Mixtral (arch "llama" with an
expert count) and Qwen3-MoE ("qwen3moe"), written here from random HF models with the
`gguf` package: greedy output equals the HF folder they came from."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
from safetensors.numpy import load_file, save_file

from quire import LLM, SamplingParams

PROMPTS = ["Hello world", "the scheduler serves paged attention blocks to every request"]


def _permute(w: np.ndarray, heads: int) -> np.ndarray:
    """llama.cpp's converter layout of q/k rows (the inverse of quire's un-permute)."""
    return w.reshape(heads, 2, w.shape[0] // heads // 2, *w.shape[1:]).swapaxes(1, 2) \
        .reshape(w.shape)


def write_moe_gguf(model_dir: str, path: str, quant_experts: bool = False) -> None:
    import gguf

    cfg = json.load(open(os.path.join(model_dir, "config.json")))
    t = load_file(os.path.join(model_dir, "model.safetensors"))
    mixtral = cfg["model_type"] == "mixtral"
    arch = "llama" if mixtral else "qwen3moe"
    w = gguf.GGUFWriter(path, arch)
    add_dimensions(w, cfg)
    w.add_rope_freq_base(cfg["rope_parameters"]["rope_theta"])
    experts = cfg.get("num_local_experts") or cfg["num_experts"]
    w.add_expert_count(experts)
    w.add_expert_used_count(cfg["num_experts_per_tok"])
    if not mixtral:
        head_dim = cfg.get("head_dim") or cfg["hidden_size"] // cfg["num_attention_heads"]
        w.add_key_length(head_dim)
        w.add_value_length(head_dim)
        w.add_expert_feed_forward_length(cfg["moe_intermediate_size"])
        w.add_bool(f"{arch}.expert_weights_norm", cfg["norm_topk_prob"])
    w.add_tensor("token_embd.weight", t["model.embed_tokens.weight"])
    w.add_tensor("output_norm.weight", t["model.norm.weight"])
    w.add_tensor("output.weight", t["lm_head.weight"])
    heads = {"q": cfg["num_attention_heads"], "k": cfg["num_key_value_heads"]}
    for i in range(cfg["num_hidden_layers"]):
        hf = f"model.layers.{i}."
        blk = f"blk.{i}."
        w.add_tensor(blk + "attn_norm.weight", t[hf + "input_layernorm.weight"])
        w.add_tensor(blk + "ffn_norm.weight", t[hf + "post_attention_layernorm.weight"])
        for p in "qkv":
            x = t[hf + f"self_attn.{p}_proj.weight"]
            w.add_tensor(blk + f"attn_{p}.weight", _permute(x, heads[p]) if mixtral and p in
                         heads else x)
        w.add_tensor(blk + "attn_output.weight", t[hf + "self_attn.o_proj.weight"])
        if not mixtral:
            w.add_tensor(blk + "attn_q_norm.weight", t[hf + "self_attn.q_norm.weight"])
            w.add_tensor(blk + "attn_k_norm.weight", t[hf + "self_attn.k_norm.weight"])
        moe = "block_sparse_moe" if mixtral else "mlp"
        if hf + f"{moe}.gate.weight" not in t:  # a dense layer of an MoE model
            for p in ("gate", "up", "down"):
                w.add_tensor(blk + f"ffn_{p}.weight", t[hf + f"mlp.{p}_proj.weight"])
            continue
        w.add_tensor(blk + "ffn_gate_inp.weight", t[hf + f"{moe}.gate.weight"])
        names = ("w1", "w3", "w2") if mixtral else ("gate_proj", "up_proj", "down_proj")
        for p, name in zip(("gate", "up", "down"), names):
            stacked = np.stack([t[hf + f"{moe}.experts.{e}.{name}.weight"]
                                for e in range(experts)])
            qtype = gguf.GGMLQuantizationType.F32
            if quant_experts:
                qtype = gguf.GGMLQuantizationType.Q8_0
                stacked = gguf.quants.quantize(stacked, qtype)
            w.add_tensor(blk + f"ffn_{p}_exps.weight", stacked, raw_dtype=qtype)
    finish(w)


def add_dimensions(writer, cfg: dict) -> None:
    """The metadata every architecture's file has, from an HF config."""
    writer.add_block_count(cfg["num_hidden_layers"])
    writer.add_context_length(cfg["max_position_embeddings"])
    writer.add_embedding_length(cfg["hidden_size"])
    writer.add_feed_forward_length(cfg["intermediate_size"])
    writer.add_head_count(cfg["num_attention_heads"])
    writer.add_head_count_kv(cfg["num_key_value_heads"])
    writer.add_layer_norm_rms_eps(cfg["rms_norm_eps"])
    writer.add_vocab_size(cfg["vocab_size"])


def finish(writer) -> None:
    """Write a GGUFWriter's header, metadata and tensors, and close it."""
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


def greedy(model: str, tokenizer: str, prompts: list[str] = PROMPTS) -> list[list[int]]:
    llm = LLM(model, tokenizer=tokenizer, dtype="float32", block_size=16)
    params = SamplingParams(temperature=0, max_tokens=12, ignore_eos=True)
    return [o.outputs[0].token_ids for o in llm.generate(prompts, params, use_tqdm=False)]


@pytest.mark.parametrize("arch", ["mixtral", "qwen3_moe"])
def test_moe_gguf_equals_its_hf_folder(model_factory, tmp_path, arch):
    model_dir = model_factory(arch)
    path = str(tmp_path / f"{arch}.gguf")
    write_moe_gguf(model_dir, path)
    llm = LLM(path, tokenizer=model_dir, dtype="float32", block_size=16)
    assert llm.engine.model_info.architecture == \
        {"mixtral": "MixtralForCausalLM", "qwen3_moe": "Qwen3MoeForCausalLM"}[arch]
    assert greedy(path, model_dir) == greedy(model_dir, model_dir)


@pytest.mark.parametrize("backend", ["cpu", "tpu"])
def test_quantized_experts_equal_their_dequantized_reference(model_factory, tmp_path, copy_model,
                                                            backend):
    """Q8_0 expert stacks stay packed on the cpu backend (one QuantLinear per expert and
    projection, run by the packed kernel on each expert's grouped tokens: about a quarter
    of the float32 experts' bytes) and are dequantized for the JAX family's ragged matmul;
    greedy output equals an HF folder holding the same dequantized experts."""
    import gguf

    from quire.backends.torch.quantization import QuantMoEExperts

    model_dir = model_factory("mixtral")
    path = str(tmp_path / "q8.gguf")
    write_moe_gguf(model_dir, path, quant_experts=True)
    reference = copy_model(model_dir)
    tensors = load_file(os.path.join(reference, "model.safetensors"))
    q8 = gguf.GGMLQuantizationType.Q8_0
    for name, x in tensors.items():
        if ".experts." in name:
            tensors[name] = gguf.quants.dequantize(gguf.quants.quantize(x, q8), q8) \
                .astype(np.float32)
    save_file(tensors, os.path.join(reference, "model.safetensors"))
    params = SamplingParams(temperature=0, max_tokens=12, ignore_eos=True)
    got = LLM(path, tokenizer=model_dir, dtype="float32", block_size=16, backend=backend)
    if backend == "cpu":
        moe = [m for m in got.engine.executor.model.modules()
               if isinstance(m, QuantMoEExperts)]
        assert len(moe) == 2 and all(len(m.up) == 4 and m.w13 is None for m in moe)
        packed = sum(q.qweight.nbytes + q.scales.nbytes for m in moe for q in [*m.up, *m.down])
        dense = sum(q.in_features * q.out_features * 4 for m in moe for q in [*m.up, *m.down])
        assert packed < 0.3 * dense
    want = [o.outputs[0].token_ids
            for o in LLM(reference, dtype="float32", block_size=16).generate(
                PROMPTS, params, use_tqdm=False)]
    assert [o.outputs[0].token_ids for o in got.generate(PROMPTS, params, use_tqdm=False)] \
        == want
