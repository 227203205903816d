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
                  "qwen3": "Qwen3ForCausalLM"}

_LAYER_NAMES = {
    "attn_norm": "input_layernorm", "ffn_norm": "post_attention_layernorm",
    "attn_q": "self_attn.q_proj", "attn_k": "self_attn.k_proj", "attn_v": "self_attn.v_proj",
    "attn_output": "self_attn.o_proj", "attn_q_norm": "self_attn.q_norm",
    "attn_k_norm": "self_attn.k_norm", "ffn_gate": "mlp.gate_proj", "ffn_up": "mlp.up_proj",
    "ffn_down": "mlp.down_proj",
}
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
    return {
        "architectures": [_ARCHITECTURES[arch]],
        "model_type": arch,
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

    permute = config["model_type"] == "llama"
    heads = {"attn_q": config["num_attention_heads"], "attn_k": config["num_key_value_heads"]}
    plain = {GGMLQuantizationType.F32, GGMLQuantizationType.F16, GGMLQuantizationType.BF16}
    dequantized: set[str] = set()
    for t in reader.tensors:
        m = _LAYER_RE.fullmatch(t.name)
        if m is None and t.name not in _GLOBAL_NAMES or \
                m is not None and m.group(2) not in _LAYER_NAMES:
            raise ValueError(f"unexpected GGUF tensor {t.name!r}")
        name = _GLOBAL_NAMES[t.name] if m is None else \
            f"model.layers.{m.group(1)}.{_LAYER_NAMES[m.group(2)]}.{m.group(3)}"
        part = None if m is None else m.group(2)
        w: np.ndarray | PackedWeight | None = None
        if keep_quantized and len(t.shape) == 2:
            n, k = int(t.shape[1]), int(t.shape[0])  # GGUF lists dimensions innermost first
            w = from_gguf(t.data, int(t.tensor_type), (n, k))
        if w is None:
            if t.tensor_type not in plain and t.tensor_type.name not in dequantized:
                dequantized.add(t.tensor_type.name)
                logger.info("GGUF %s tensors dequantized at load%s", t.tensor_type.name,
                            " (no kernel for this type on this backend)" if keep_quantized
                            else "")
            w = np.array(dequantize(t.data, t.tensor_type), dtype=np.float32)  # writable
        if permute and part in heads:
            w = _unpermute_rope(w, heads[part]) if isinstance(w, np.ndarray) else \
                w.rows(_unpermute_rope(np.arange(w.shape[0]), heads[part]))
        yield name, w


def open_gguf(path: str, keep_quantized: bool = False
              ) -> tuple[dict[str, Any], Iterator[tuple[str, np.ndarray | PackedWeight]]]:
    reader = _reader(path)
    config = gguf_config(reader)
    return config, gguf_weights(reader, config, keep_quantized)
