"""Small random-weight HF model folders, built locally (no download) for tests and demos.

    python -m quire.testing.tiny_models OUT_DIR [--arch llama] [--dtype float32]

writes config.json + model.safetensors + a BPE tokenizer trained here with `tokenizers`.
"""

from __future__ import annotations

import argparse
import logging
import os
import random

CHAT_TEMPLATE = (
    "{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}</s>{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>{% endif %}"
)

_WORDS = (
    "the a of and to in is was for on that with as by at from it be this are an or have "
    "quire serves models on any accelerator paged attention blocks cache tokens batch "
    "scheduler request prompt output sample greedy decode prefill chunk kernel memory "
    "paris france capital city river mountain ocean forest bird song light dark morning "
    "evening one two three four five six seven eight nine ten hello world question answer"
).split()


def corpus(num_lines: int = 2000, seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    lines = []
    for _ in range(num_lines):
        words = [rng.choice(_WORDS) for _ in range(rng.randint(4, 16))]
        lines.append(" ".join(words).capitalize() + rng.choice([".", "!", "?", ","]))
    lines.append("0123456789 ,.;:!?'\"()-é ü 日本 🙂")
    return lines


def build_tokenizer(out_dir: str, vocab_size: int = 512):
    """Train a byte-level BPE tokenizer and save it as a transformers fast tokenizer."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE(unk_token=None))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    specials = ["<s>", "</s>", "<pad>", "<|user|>", "<|assistant|>", "<|system|>"]
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=specials,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(corpus(), trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>",
                                   pad_token="<pad>")
    fast.chat_template = CHAT_TEMPLATE
    fast.save_pretrained(out_dir)
    return fast


_ARCH = {
    "llama": ("LlamaConfig", {"rope_parameters": {"rope_type": "llama3", "factor": 8.0,
                                                  "low_freq_factor": 1.0,
                                                  "high_freq_factor": 4.0,
                                                  "original_max_position_embeddings": 64,
                                                  "rope_theta": 10000.0}}),
    "mistral": ("MistralConfig", {"sliding_window": None}),
    "qwen2": ("Qwen2Config", {}),
    "qwen3": ("Qwen3Config", {"head_dim": 32}),
    # Small windows and caps that bite at test lengths: prompts run past the window.
    "gemma2": ("Gemma2Config", {"head_dim": 16, "query_pre_attn_scalar": 24,
                                "sliding_window": 8, "attn_logit_softcapping": 20.0,
                                "final_logit_softcapping": 30.0}),
    "gemma3": ("Gemma3TextConfig", {"head_dim": 16, "query_pre_attn_scalar": 16,
                                    "sliding_window": 8,
                                    "layer_types": ["sliding_attention", "full_attention"],
                                    "rope_parameters": {
                                        "sliding_attention": {"rope_type": "default",
                                                              "rope_theta": 10000.0},
                                        "full_attention": {"rope_type": "linear",
                                                           "factor": 2.0,
                                                           "rope_theta": 1000000.0}}}),
    "phi3": ("Phi3Config", {"original_max_position_embeddings": 64,
                            "rope_parameters": {"rope_type": "longrope",
                                                "rope_theta": 10000.0,
                                                "partial_rotary_factor": 0.75,
                                                "short_factor": [1.0 + 0.05 * i
                                                                 for i in range(6)],
                                                "long_factor": [1.5 + 0.5 * i
                                                                for i in range(6)]}}),
    "mixtral": ("MixtralConfig", {"num_local_experts": 4, "num_experts_per_tok": 2}),
    "qwen3_moe": ("Qwen3MoeConfig", {"num_experts": 6, "num_experts_per_tok": 2,
                                     "moe_intermediate_size": 48, "norm_topk_prob": False,
                                     "decoder_sparse_step": 1, "mlp_only_layers": [1]}),
}


def build_model(
    out_dir: str,
    arch: str = "llama",
    hidden_size: int = 64,
    num_layers: int = 2,
    num_heads: int = 4,
    num_kv_heads: int = 2,
    intermediate_size: int = 128,
    vocab_size: int = 512,
    max_position_embeddings: int = 1024,
    tie_word_embeddings: bool = False,
    weight_scale: float = 3.0,
    logit_scale: float = 10.0,
    dtype: str = "float32",
    seed: int = 0,
    model_vocab_size: int | None = None,
    **overrides,
) -> str:
    """Write a random model of architecture `arch` (a key of _ARCH) with a
    locally trained tokenizer into out_dir. weight_scale multiplies the default random init
    and logit_scale the output embeddings, so greedy decoding has clear winners instead of
    near ties. model_vocab_size pads the model's vocabulary beyond the tokenizer's (for
    benchmarks fed token ids)."""
    import torch
    import transformers

    os.makedirs(out_dir, exist_ok=True)
    tokenizer = build_tokenizer(out_dir, vocab_size)
    config_name, extra = _ARCH[arch]
    config = getattr(transformers, config_name)(
        vocab_size=max(model_vocab_size or 0, len(tokenizer)), hidden_size=hidden_size,
        num_hidden_layers=num_layers,
        num_attention_heads=num_heads, num_key_value_heads=num_kv_heads,
        intermediate_size=intermediate_size, max_position_embeddings=max_position_embeddings,
        tie_word_embeddings=tie_word_embeddings, bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
        **{**extra, **overrides},
    )
    torch.manual_seed(seed)
    model = transformers.AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name:
                p.add_(torch.randn_like(p) * 0.1)
            else:
                p.mul_(weight_scale)
        # Spread the logits out (the final norm fixes the hidden scale): clear greedy winners.
        model.get_output_embeddings().weight.mul_(logit_scale)
    model.to(getattr(torch, dtype)).save_pretrained(out_dir)
    return out_dir


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out_dir")
    parser.add_argument("--arch", default="llama", choices=sorted(_ARCH))
    parser.add_argument("--hidden-size", type=int, default=256)
    parser.add_argument("--num-layers", type=int, default=4)
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    args = parser.parse_args()
    build_model(args.out_dir, args.arch, hidden_size=args.hidden_size,
                num_layers=args.num_layers, num_heads=8, num_kv_heads=4,
                intermediate_size=4 * args.hidden_size, dtype=args.dtype)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    logging.getLogger(__name__).info("wrote a random %s model to %s", args.arch, args.out_dir)


if __name__ == "__main__":
    main()
