"""The engine's command-line arguments (shared by generate, serve, chat and bench) and the
EngineConfig they make."""

from __future__ import annotations

import argparse

from quire.core.config import EngineConfig

_GiB = 1 << 30


def add_engine_args(parser: argparse.ArgumentParser) -> None:
    g = parser.add_argument_group("engine")
    g.add_argument("--model", help="Hugging Face model folder (config.json + safetensors) or "
                                   ".gguf file; default: the bundled SmolLM2-135M-Instruct")
    g.add_argument("--backend", default=None,
                   help="backend name (see `quire backends`); default: $QUIRE_BACKEND, else "
                        "the best available")
    g.add_argument("--tokenizer", default=None, help="tokenizer folder (default: the model's)")
    g.add_argument("--dtype", default="auto",
                   choices=["auto", "float32", "bfloat16", "float16"],
                   help="weights and activations (auto: the model's, else the backend's)")
    g.add_argument("--block-size", type=int, default=None,
                   help="tokens per KV block (default: 16 when the backend supports it)")
    g.add_argument("--num-blocks", type=int, default=None,
                   help="KV blocks to allocate (default: from --kv-cache-gib)")
    g.add_argument("--kv-cache-gib", type=float, default=2.0, help="KV cache memory budget")
    g.add_argument("--max-num-seqs", type=int, default=256,
                   help="requests running at once")
    g.add_argument("--max-num-batched-tokens", type=int, default=None,
                   help="token budget of one step (default 2048)")
    g.add_argument("--max-model-len", type=int, default=None,
                   help="longest prompt + output (default: the model's, capped by the cache)")
    g.add_argument("--no-prefix-caching", action="store_true",
                   help="disable automatic prefix caching")
    g.add_argument("--no-chunked-prefill", action="store_true",
                   help="never split a prompt across steps")
    g.add_argument("--seed", type=int, default=0, help="seed of unseeded sampling")
    g.add_argument("--quantization", "-q", default=None,
                   help="weight quantization method (default: the checkpoint's, where the "
                        "backend has a kernel; 'none' dequantizes at load)")
    g.add_argument("--kv-cache-dtype", default="auto",
                   choices=["auto", "int8", "fp8", "fp8_e4m3"],
                   help="KV cache storage: auto (the model's dtype) or 8-bit with a scale per "
                        "token and head, about twice the tokens per GiB (cpu, cuda, rocm)")
    g.add_argument("--disable-hybrid-kv-cache-manager", action="store_true",
                   help="one block table for every layer, even when a model mixes "
                        "sliding-window and full-attention layers (Gemma 2/3), which then "
                        "keep every block of every layer")
    g.add_argument("--speculative-config", default=None, metavar="JSON",
                   help='speculative decoding, e.g. \'{"method": "ngram", '
                        '"num_speculative_tokens": 4}\' or \'{"method": "draft_model", '
                        '"model": PATH, "num_speculative_tokens": 4}\'')
    g.add_argument("--tensor-parallel-size", "-tp", type=int, default=1,
                   help="split the model over this many ranks (torch family: one process "
                        "each on this host, gloo collectives on CPU)")
    g.add_argument("--distributed-executor-backend", default=None, choices=["mp", "ray"],
                   help="how tensor-parallel ranks run: mp (processes on this host, the "
                        "default) or ray (Ray actors; pip install 'quire[ray]')")


def engine_config(args: argparse.Namespace) -> EngineConfig:
    return EngineConfig(
        model=args.model, backend=args.backend, tokenizer=args.tokenizer, dtype=args.dtype,
        block_size=args.block_size, num_blocks=args.num_blocks,
        kv_cache_memory_bytes=int(args.kv_cache_gib * _GiB), max_num_seqs=args.max_num_seqs,
        max_num_batched_tokens=args.max_num_batched_tokens, max_model_len=args.max_model_len,
        enable_prefix_caching=not args.no_prefix_caching,
        enable_chunked_prefill=not args.no_chunked_prefill, seed=args.seed,
        quantization=args.quantization, speculative_config=args.speculative_config,
        tensor_parallel_size=args.tensor_parallel_size,
        distributed_executor_backend=args.distributed_executor_backend,
        kv_cache_dtype=args.kv_cache_dtype,
        disable_hybrid_kv_cache_manager=args.disable_hybrid_kv_cache_manager,
    )
