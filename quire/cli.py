"""The `quire` command: generate, serve, chat, bench, backends."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence

from quire.bench.commands import add_bench_parser
from quire.engine_args import add_engine_args, engine_config


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
    """The table; exit 1 when no backend (or not the named one) can be selected, and with
    --check also when the chosen backend's executor cannot be imported."""
    from quire.plugins.manager import load_plugins
    from quire.plugins.selection import describe, load_factory, select_backend

    plugins = load_plugins()
    sys.stdout.write(describe(plugins) + "\n")
    try:
        chosen = select_backend(plugins, args.backend)
    except ValueError as exc:
        sys.stdout.write(f"\nno selection: {str(exc).splitlines()[0]}\n")
        return 1
    sys.stdout.write(f"\nselected: {chosen.spec.name}\n")
    if args.check:
        try:
            executor_cls = load_factory(chosen)
            caps = executor_cls.capabilities()
        except Exception as exc:  # the check's whole point: report, exit non-zero
            sys.stdout.write(f"check failed: {exc}\n")
            return 1
        sys.stdout.write(f"check passed: {chosen.spec.factory} imports; dtypes "
                         f"{', '.join(caps.dtypes)}; block sizes "
                         f"{', '.join(map(str, caps.block_sizes))}\n")
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
    srv.add_argument("--api-key", default=None,
                     help="require `Authorization: Bearer KEY` on every /v1 route "
                          "(default: $QUIRE_API_KEY; unset: no key)")
    srv.add_argument("--max-request-bytes", type=int, default=8 << 20,
                     help="answer 413 to larger request bodies (default 8 MiB)")
    srv.add_argument("--tool-call-parser", default="hermes",
                     choices=["hermes", "qwen", "llama3_json", "mistral"],
                     help="how the model writes tool calls (default hermes: <tool_call> JSON)")
    srv.add_argument("--data-parallel-size", "-dp", type=int, default=1,
                     help="engine replicas (processes) behind this server, routed by load "
                          "and shared prompt prefixes (default 1)")
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

    add_bench_parser(sub)

    be = sub.add_parser("backends", help="list registered backends and their availability")
    be.add_argument("--backend", default=None, help="check that this backend can be selected")
    be.add_argument("--check", action="store_true",
                    help="also import the selected backend's executor and read its "
                         "capabilities; exit 1 on any failure (for scripts and CI)")
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
