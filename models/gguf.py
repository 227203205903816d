"""GGUF files (llama.cpp's format): config and weights, dequantized, under HF names.

A .gguf file carries the config as key/value metadata, the tokenizer (read by transformers
elsewhere) and tensors, often quantized (Q4_1, Q8_0, ...). With keep_quantized, 2-D weights
of a format quire.models.quant repacks come out as PackedWeight (kept at their size);
everything else is dequantized here with the `gguf` package (one log line per quantized
type) and cast to the engine dtype by each family's loader. numpy only: both families read
GGUF files through it.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterator
from typing import Any

import numpy as np

from quire.models.quant import (
    PackedExperts,
    PackedWeight,
    concat_rows,
    experts_from_gguf,
    from_gguf,
)

logger = logging.getLogger(__name__)

_ARCHITECTURES = {"llama": "LlamaForCausalLM", "qwen2": "Qwen2ForCausalLM",
                  "qwen3": "Qwen3ForCausalLM", "qwen3moe": "Qwen3MoeForCausalLM",
                  "gemma2": "Gemma2ForCausalLM", "gemma3": "Gemma3ForCausalLM",
                  "phi3": "Phi3ForCausalLM"}
_MODEL_TYPES = {"qwen3moe": "qwen3_moe", "gemma3": "gemma3_text"}
_GEMMA = ("gemma2", "gemma3")

_LAYER_NAMES = {
    "attn_norm": "input_layernorm", "ffn_norm": "post_attention_layernorm",
    "attn_q": "self_attn.q_proj", "attn_k": "self_attn.k_proj", "attn_v": "self_attn.v_proj",
    "attn_output": "self_attn.o_proj", "attn_q_norm": "self_attn.q_norm",
    "attn_k_norm": "self_attn.k_norm", "ffn_gate": "mlp.gate_proj", "ffn_up": "mlp.up_proj",
    "ffn_down": "mlp.down_proj",
    # mixture of experts: the router and the experts stacked in one 3-D tensor each
    "ffn_gate_inp": "mlp.gate", "ffn_down_exps": "mlp.experts.down_proj",
}
# Where an architecture's tensors differ from llama's names. Gemma's sandwich norms: ffn_norm
# is the pre-feedforward norm, post_attention_norm / post_ffw_norm the two post norms.
# Phi-3's fused projections: attn_qkv, and ffn_up holding gate then up.
_ARCH_LAYER_NAMES = {
    "gemma2": {"ffn_norm": "pre_feedforward_layernorm",
               "post_attention_norm": "post_attention_layernorm",
               "post_ffw_norm": "post_feedforward_layernorm"},
    "phi3": {"attn_qkv": "self_attn.qkv_proj", "ffn_up": "mlp.gate_up_proj"},
}
_ARCH_LAYER_NAMES["gemma3"] = _ARCH_LAYER_NAMES["gemma2"]
# Stacked gate and up experts ([E, I, H] each): concatenated into HF's stacked gate_up_proj.
_GATE_UP_EXPERTS = ("ffn_gate_exps", "ffn_up_exps")
_GLOBAL_NAMES = {"token_embd.weight": "model.embed_tokens.weight",
                 "output_norm.weight": "model.norm.weight", "output.weight": "lm_head.weight"}
_LAYER_RE = re.compile(r"blk\.(\d+)\.(\w+)\.(weight|bias)")


def _reader(path: str):
    try:
        from gguf import GGUFReader
    except ImportError as exc:
        raise ValueError("reading GGUF files needs the `gguf` package: pip install gguf") from exc
    return GGUFReader(path)


def _field(reader, key: str, default: Any = None) -> Any:
    f = reader.fields.get(key)
    return default if f is None else f.contents()


def gguf_config(reader) -> dict[str, Any]:
    """The HF config.json equivalent of a GGUF file's metadata."""
    arch = _field(reader, "general.architecture")
    if arch not in _ARCHITECTURES:
        raise ValueError(f"GGUF architecture {arch!r} is not supported; supported: "
                         f"{', '.join(sorted(_ARCHITECTURES))}")
    p = arch + "."
    num_heads = _field(reader, p + "attention.head_count")
    hidden = _field(reader, p + "embedding_length")
    names = {t.name for t in reader.tensors}
    vocab = _field(reader, p + "vocab_size") or len(_field(reader, "tokenizer.ggml.tokens"))
    experts = _field(reader, p + "expert_count", 0)
    if arch == "llama" and experts:
        identity = {"architectures": ["MixtralForCausalLM"], "model_type": "mixtral"}
    else:
        identity = {"architectures": [_ARCHITECTURES[arch]],
                   "model_type": _MODEL_TYPES.get(arch, arch)}
    moe = {} if not experts else {
        "num_local_experts": experts,
        "num_experts_per_tok": _field(reader, p + "expert_used_count"),
        "moe_intermediate_size": _field(reader, p + "expert_feed_forward_length")
        or _field(reader, p + "feed_forward_length"),
        "norm_topk_prob": bool(_field(reader, p + "expert_weights_norm", True)),
        # layers without a router are dense
        "mlp_only_layers": [i for i in range(_field(reader, p + "block_count"))
                            if f"blk.{i}.ffn_gate_inp.weight" not in names],
    }
    return {
        **identity, **moe, **_arch_config(reader, arch, num_heads, hidden),
        "vocab_size": vocab,
        "hidden_size": hidden,
        "intermediate_size": _field(reader, p + "feed_forward_length"),
        "num_hidden_layers": _field(reader, p + "block_count"),
        "num_attention_heads": num_heads,
        "num_key_value_heads": _field(reader, p + "attention.head_count_kv", num_heads),
        "head_dim": _field(reader, p + "attention.key_length", hidden // num_heads),
        "rms_norm_eps": _field(reader, p + "attention.layer_norm_rms_epsilon", 1e-6),
        "max_position_embeddings": _field(reader, p + "context_length", 2048),
        "rope_theta": _field(reader, p + "rope.freq_base", 10000.0),
        "tie_word_embeddings": "output.weight" not in names,
        "bos_token_id": _field(reader, "tokenizer.ggml.bos_token_id"),
        "eos_token_id": _field(reader, "tokenizer.ggml.eos_token_id"),
    }


def _arch_config(reader, arch: str, num_heads: int, hidden: int) -> dict[str, Any]:
    """The config entries of Gemma 2 / 3 and Phi-3 files, as llama.cpp writes and reads them.

    Gemma: soft-caps and the window from the metadata. The query scale is
    {arch}.attention.scale where a file has it; else llama.cpp's own rule (1 / sqrt(head
    size), or 1 / sqrt(hidden / heads) for the 27B models, 46 / 62 layers), which is what
    query_pre_attn_scalar says in the HF configs of the released models. Gemma 3's window
    pattern is {arch}.attention.sliding_window_pattern where present, else every sixth layer
    global (llama.cpp's fixed pattern); its local layers use rope base 10000.
    Phi-3: the rotary dimension and LongRoPE's factors, which llama.cpp stores as tensors
    (rope_factors_long / _short)."""
    p = arch + "."
    layers = _field(reader, p + "block_count")
    if arch in _GEMMA:
        head = _field(reader, p + "attention.key_length", hidden // num_heads)
        scale = _field(reader, p + "attention.scale")
        scalar = head if layers not in (46, 62) else hidden // num_heads
        out: dict[str, Any] = {
            "head_dim": head,
            "query_pre_attn_scalar": scale**-2 if scale else scalar,
            "sliding_window": _field(reader, p + "attention.sliding_window"),
            "hidden_activation": "gelu_pytorch_tanh",
        }
        if arch == "gemma2":
            out["attn_logit_softcapping"] = _field(reader, p + "attn_logit_softcapping")
            out["final_logit_softcapping"] = _field(reader, p + "final_logit_softcapping")
            return out
        pattern = _field(reader, p + "attention.sliding_window_pattern", 6)
        if isinstance(pattern, list):  # one flag per layer: sliding or not
            out["layer_types"] = ["sliding_attention" if s else "full_attention"
                                  for s in pattern]
        else:
            out["layer_types"] = ["full_attention" if (i + 1) % pattern == 0 else
                                  "sliding_attention" for i in range(layers)]
        full: dict[str, Any] = {"rope_type": "default",
                                "rope_theta": _field(reader, p + "rope.freq_base", 1e6)}
        if _field(reader, p + "rope.scaling.type") == "linear":
            full = {**full, "rope_type": "linear",
                    "factor": _field(reader, p + "rope.scaling.factor")}
        out["rope_parameters"] = {"full_attention": full, "sliding_attention": {
            "rope_type": "default", "rope_theta": 10000.0}}
        return out
    if arch == "phi3":
        head = hidden // num_heads
        rot = _field(reader, p + "rope.dimension_count", head)
        rope: dict[str, Any] = {"rope_type": "default",
                                "rope_theta": _field(reader, p + "rope.freq_base", 10000.0),
                                "partial_rotary_factor": rot / head}
        factors = {t.name: np.asarray(t.data, np.float32).tolist() for t in reader.tensors
                   if t.name in ("rope_factors_long.weight", "rope_factors_short.weight")}
        if factors:
            rope.update(rope_type="longrope",
                        long_factor=factors["rope_factors_long.weight"],
                        short_factor=factors["rope_factors_short.weight"])
            attn = _field(reader, p + "rope.scaling.attn_factor")
            if attn is not None:
                rope["attention_factor"] = attn
        return {"rope_parameters": rope, "original_max_position_embeddings":
                _field(reader, p + "rope.scaling.original_context_length")
                or _field(reader, p + "context_length", 2048),
                "sliding_window": _field(reader, p + "attention.sliding_window")}
    return {}


def _unpermute_rope(w: np.ndarray, num_heads: int) -> np.ndarray:
    """llama.cpp's converter interleaves the two rotary halves of each q/k head; undo it to
    get back HF's rotate-half layout. w: [num_heads * head_size, ...]."""
    return (w.reshape(num_heads, w.shape[0] // num_heads // 2, 2, *w.shape[1:])
            .swapaxes(1, 2).reshape(w.shape))


def gguf_weights(reader, config: dict[str, Any], keep_quantized: bool = False
                 ) -> Iterator[tuple[str, np.ndarray | PackedWeight]]:
    from gguf.constants import GGMLQuantizationType
    from gguf.quants import dequantize

    permute = config["model_type"] in ("llama", "mixtral")
    heads = {"attn_q": config["num_attention_heads"], "attn_k": config["num_key_value_heads"]}
    arch = _field(reader, "general.architecture")
    layer_names = {**_LAYER_NAMES, **_ARCH_LAYER_NAMES.get(arch, {})}
    norm_shift = arch in _GEMMA  # llama.cpp stores Gemma's norms as 1 + w; HF as w
    plain = {GGMLQuantizationType.F32, GGMLQuantizationType.F16, GGMLQuantizationType.BF16}
    dequantized: set[str] = set()
    gate_up: dict[str, dict[str, np.ndarray]] = {}
    for t in reader.tensors:
        m = _LAYER_RE.fullmatch(t.name)
        if m is not None and m.group(2) in _GATE_UP_EXPERTS:
            halves = gate_up.setdefault(m.group(1), {})
            halves[m.group(2)] = _experts(t, dequantize, plain, dequantized, keep_quantized)
            if len(halves) == 2:  # HF's stacked layout: [E, 2I, H], gate then up
                gate, up = (halves[n] for n in _GATE_UP_EXPERTS)
                if isinstance(gate, PackedExperts) and isinstance(up, PackedExperts):
                    try:
                        fused: np.ndarray | PackedExperts = PackedExperts(tuple(
                            concat_rows([g, u]) for g, u in zip(gate.experts, up.experts)))
                    except ValueError:  # halves of different formats
                        fused = np.concatenate([gate.dequantize(), up.dequantize()], axis=1)
                else:
                    fused = np.concatenate([_as_dense(gate), _as_dense(up)], axis=1)
                yield f"model.layers.{m.group(1)}.mlp.experts.gate_up_proj", fused
                del gate_up[m.group(1)]
            continue
        if t.name in ("rope_factors_long.weight", "rope_factors_short.weight"):
            continue  # in the config (LongRoPE's factors)
        if m is None and t.name not in _GLOBAL_NAMES or \
                m is not None and m.group(2) not in layer_names:
            raise ValueError(f"unexpected GGUF tensor {t.name!r}")
        name = _GLOBAL_NAMES[t.name] if m is None else \
            f"model.layers.{m.group(1)}.{layer_names[m.group(2)]}.{m.group(3)}"
        if m is not None and m.group(2).endswith("_exps"):
            name = name.removesuffix(".weight")  # HF's stacked experts carry no suffix
        part = None if m is None else m.group(2)
        w: np.ndarray | PackedWeight | PackedExperts | None = None
        if part is not None and part.endswith("_exps"):
            w = _experts(t, dequantize, plain, dequantized, keep_quantized)
        elif keep_quantized and len(t.shape) == 2:
            n, k = int(t.shape[1]), int(t.shape[0])  # GGUF lists dimensions innermost first
            w = from_gguf(t.data, int(t.tensor_type), (n, k))
        if w is None:
            w = _dense(t, dequantize, plain, dequantized, keep_quantized)
        if permute and part in heads:
            w = _unpermute_rope(w, heads[part]) if isinstance(w, np.ndarray) else \
                w.rows(_unpermute_rope(np.arange(w.shape[0]), heads[part]))
        if norm_shift and name.endswith("norm.weight"):
            w = np.asarray(w, np.float32) - 1
        yield name, w


def _experts(t, dequantize, plain, dequantized: set[str], keep_quantized: bool
             ) -> np.ndarray | PackedExperts:
    """A 3-D expert stack: kept quantized (one PackedWeight per expert) where it can be."""
    if keep_quantized and len(t.shape) == 3:
        k, n, e = (int(d) for d in t.shape)  # innermost first
        packed = experts_from_gguf(t.data, int(t.tensor_type), (e, n, k))
        if packed is not None:
            return packed
    return _dense(t, dequantize, plain, dequantized, keep_quantized)


def _as_dense(w: np.ndarray | PackedExperts) -> np.ndarray:
    return w.dequantize() if isinstance(w, PackedExperts) else w


def _dense(t, dequantize, plain, dequantized: set[str], keep_quantized: bool) -> np.ndarray:
    """A tensor as float32 (dequantized, with one log line per quantized type)."""
    if t.tensor_type not in plain and t.tensor_type.name not in dequantized:
        dequantized.add(t.tensor_type.name)
        logger.info("GGUF %s tensors dequantized at load%s", t.tensor_type.name,
                    " (no kernel for this type on this backend)" if keep_quantized else "")
    return np.array(dequantize(t.data, t.tensor_type), dtype=np.float32)  # writable


def open_gguf(path: str, keep_quantized: bool = False
              ) -> tuple[dict[str, Any], Iterator[tuple[str, np.ndarray | PackedWeight]]]:
    reader = _reader(path)
    config = gguf_config(reader)
    return config, gguf_weights(reader, config, keep_quantized)
