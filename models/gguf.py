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

from quire.models.quant import PackedWeight, from_gguf

logger = logging.getLogger(__name__)

_ARCHITECTURES = {"llama": "LlamaForCausalLM", "qwen2": "Qwen2ForCausalLM",
                  "qwen3": "Qwen3ForCausalLM", "qwen3moe": "Qwen3MoeForCausalLM"}
_MODEL_TYPES = {"qwen3moe": "qwen3_moe"}

_LAYER_NAMES = {
    "attn_norm": "input_layernorm", "ffn_norm": "post_attention_layernorm",
    "attn_q": "self_attn.q_proj", "attn_k": "self_attn.k_proj", "attn_v": "self_attn.v_proj",
    "attn_output": "self_attn.o_proj", "attn_q_norm": "self_attn.q_norm",
    "attn_k_norm": "self_attn.k_norm", "ffn_gate": "mlp.gate_proj", "ffn_up": "mlp.up_proj",
    "ffn_down": "mlp.down_proj",
    # mixture of experts: the router and the experts stacked in one 3-D tensor each
    "ffn_gate_inp": "mlp.gate", "ffn_down_exps": "mlp.experts.down_proj",
}
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
        **identity, **moe,
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
    plain = {GGMLQuantizationType.F32, GGMLQuantizationType.F16, GGMLQuantizationType.BF16}
    dequantized: set[str] = set()
    gate_up: dict[str, dict[str, np.ndarray]] = {}
    for t in reader.tensors:
        m = _LAYER_RE.fullmatch(t.name)
        if m is not None and m.group(2) in _GATE_UP_EXPERTS:
            halves = gate_up.setdefault(m.group(1), {})
            halves[m.group(2)] = _dense(t, dequantize, plain, dequantized, keep_quantized)
            if len(halves) == 2:  # HF's stacked layout: [E, 2I, H], gate then up
                yield (f"model.layers.{m.group(1)}.mlp.experts.gate_up_proj",
                       np.concatenate([halves[n] for n in _GATE_UP_EXPERTS], axis=1))
                del gate_up[m.group(1)]
            continue
        if m is None and t.name not in _GLOBAL_NAMES or \
                m is not None and m.group(2) not in _LAYER_NAMES:
            raise ValueError(f"unexpected GGUF tensor {t.name!r}")
        name = _GLOBAL_NAMES[t.name] if m is None else \
            f"model.layers.{m.group(1)}.{_LAYER_NAMES[m.group(2)]}.{m.group(3)}"
        if m is not None and m.group(2).endswith("_exps"):
            name = name.removesuffix(".weight")  # HF's stacked experts carry no suffix
        part = None if m is None else m.group(2)
        w: np.ndarray | PackedWeight | None = None
        if keep_quantized and len(t.shape) == 2:
            n, k = int(t.shape[1]), int(t.shape[0])  # GGUF lists dimensions innermost first
            w = from_gguf(t.data, int(t.tensor_type), (n, k))
        if w is None:
            w = _dense(t, dequantize, plain, dequantized, keep_quantized)
        if permute and part in heads:
            w = _unpermute_rope(w, heads[part]) if isinstance(w, np.ndarray) else \
                w.rows(_unpermute_rope(np.arange(w.shape[0]), heads[part]))
        yield name, w


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
