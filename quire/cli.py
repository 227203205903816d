"""The `quire` command: generate, backends."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence

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
    g.add_argument("--block-size", type=int, default=16, help="tokens per KV block")
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


def engine_config(args: argparse.Namespace) -> EngineConfig:
    return EngineConfig(
        model=args.model, backend=args.backend, tokenizer=args.tokenizer, dtype=args.dtype,
        block_size=args.block_size, num_blocks=args.num_blocks,
        kv_cache_memory_bytes=int(args.kv_cache_gib * _GiB), max_num_seqs=args.max_num_seqs,
        max_num_batched_tokens=args.max_num_batched_tokens, max_model_len=args.max_model_len,
        enable_prefix_caching=not args.no_prefix_caching,
        enable_chunked_prefill=not args.no_chunked_prefill, seed=args.seed,
    )


def _cmd_generate(args: argparse.Namespace) -> int:
    from quire.cli_generate import run_generate

    return run_generate(args, engine_config(args))


def _cmd_serve(args: argparse.Namespace) -> int:
    from quire.server.serve import run_server

    return run_server(args, engine_config(args))


def _cmd_chat(args: argparse.Namespace) -> int:
    from quire.cli_chat import run_chat

    return run_chat(args, engine_config(args))


def _cmd_backends(args: argparse.Namespace) -> int:
    from quire.plugins.manager import load_plugins
    from quire.plugins.selection import describe, select_backend

    plugins = load_plugins()
    print(describe(plugins))
    try:
        chosen = select_backend(plugins, args.backend)
        print(f"\nselected: {chosen.spec.name}")
    except ValueError as exc:
        print(f"\nno selection: {str(exc).splitlines()[0]}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="quire", description="quire LLM serving engine")
    parser.add_argument("--log-level", default="INFO")
    sub = parser.add_subparsers(dest="command", required=True)

    gen = sub.add_parser("generate", help="generate text for prompts, offline",
                         description="Generate completions for prompts given as arguments "
                                     "or in a file (one per line).")
    add_engine_args(gen)
    gen.add_argument("--prompt", action="append", default=[], help="a prompt (repeatable)")
    gen.add_argument("--prompts-file", help="file with one prompt per line")
    gen.add_argument("--chat", action="store_true",
                     help="wrap each prompt as a user message in the chat template")
    gen.add_argument("--max-tokens", type=int, default=64, help="tokens to generate at most")
    gen.add_argument("--temperature", type=float, default=0.0, help="0 is greedy")
    gen.add_argument("--top-p", type=float, default=1.0, help="nucleus mass (1 = off)")
    gen.add_argument("--top-k", type=int, default=0, help="keep the k best (0 = off)")
    gen.add_argument("--n", type=int, default=1, help="completions per prompt")
    gen.add_argument("--stop", action="append", default=None, help="stop string (repeatable)")
    gen.add_argument("--stream", action="store_true",
                     help="print text as it is generated (one prompt at a time)")
    gen.set_defaults(func=_cmd_generate)

    srv = sub.add_parser("serve", help="serve a model over an OpenAI-compatible HTTP API",
                         description="Serve MODEL (default: the bundled demo model) at "
                                     "/v1/completions, /v1/chat/completions and friends.")
    srv.add_argument("model_pos", nargs="?", metavar="MODEL", default=None,
                     help="model folder or .gguf file (same as --model)")
    add_engine_args(srv)
    srv.add_argument("--host", default="127.0.0.1", help="address to listen on")
    srv.add_argument("--port", type=int, default=8000, help="port to listen on")
    srv.add_argument("--served-model-name", default=None,
                     help="the name clients pass as `model` (default: the model's file name)")
    srv.add_argument("--max-waiting-requests", type=int, default=None,
                     help="answer 503 when this many requests are already waiting "
                          "(default: no limit)")
    srv.set_defaults(func=_cmd_serve)

    chat = sub.add_parser("chat", help="chat with a model in the terminal",
                          description="An interactive chat using the model's chat template. "
                                      "/reset forgets the conversation, /exit quits.")
    add_engine_args(chat)
    chat.add_argument("--system", default=None, help="a system message")
    chat.add_argument("--max-tokens", type=int, default=256, help="tokens per reply at most")
    chat.add_argument("--temperature", type=float, default=0.7, help="0 is greedy")
    chat.add_argument("--top-p", type=float, default=0.9, help="nucleus mass (1 = off)")
    chat.set_defaults(func=_cmd_chat)

    from quire.bench.commands import add_bench_parser

    add_bench_parser(sub, add_engine_args)

    be = sub.add_parser("backends", help="list registered backends and their availability")
    be.add_argument("--backend", default=None, help="check that this backend can be selected")
    be.set_defaults(func=_cmd_backends)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(), format="%(levelname)s %(name)s: %(message)s")
    try:
        return args.func(args)
    except (ValueError, FileNotFoundError, TypeError) as exc:
        print(f"quire: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
