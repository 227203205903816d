"""The prepared GPU check (issue 17): every step in its own process with its own time limit,
results gathered into OUT/results.json and a summary table (OUT/summary.md, printed).

    python scripts/gpu_check.py OUT          # on an NVIDIA GPU (run through gpu_check.sh)
    python scripts/gpu_check.py OUT --dry    # on a CPU: the same steps, tiny, interpreted

Steps: Triton kernel tests; greedy cuda == cpu for every architecture with CUDA graphs on
and off; the attention benchmark (copy bandwidth, decode sweep, prefill vs SDPA, graphs);
`quire bench throughput` on a ~1B random Llama against HF generate on the same GPU; the JAX
family (tpu backend's executor) on JAX's GPU device, greedy equal to cpu.
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import subprocess
import sys
import tempfile
import time
from typing import Any

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ARCHS = ("llama", "mistral", "qwen2", "qwen3", "gemma2", "gemma3", "phi3", "mixtral",
         "qwen3_moe")
DRY_ARCHS = ("llama", "gemma2", "qwen3_moe")  # the CPU dry run: one of each kind
# Seconds per step on a GPU: together under the 9 minutes the check may take.
LIMITS = {"triton_tests": 100, "greedy": 70, "attention": 210, "throughput": 120, "jax": 60}


# -- steps run in child processes (`--step NAME`), each printing one JSON line -------------
COMMON = dict(dtype="float32", block_size=16, num_blocks=64, max_model_len=256)


def _agreement(model: str, backend: str, ref: list, max_tokens: int) -> dict[str, Any]:
    """backend's greedy tokens on model against the cpu reference outputs ref."""
    from quire import LLM
    from quire.testing.compare import greedy_agreement

    got = LLM(model, backend=backend, **COMMON).generate(
        [{"prompt_token_ids": r.prompt_token_ids} for r in ref], _greedy(max_tokens),
        use_tqdm=False)
    agreement = greedy_agreement(ref, got, 1e-3)
    return {"ok": agreement.ok, "tokens_compared": agreement.num_compared,
            "mismatches": agreement.mismatches}


def _greedy(max_tokens: int):
    from quire import SamplingParams

    return SamplingParams(temperature=0, max_tokens=max_tokens, ignore_eos=True, logprobs=2)


def _reference(arch: str, lengths: tuple[int, ...], max_tokens: int) -> tuple[str, list]:
    """(a tiny random model of arch, the cpu backend's greedy outputs on it)."""
    from quire import LLM
    from quire.testing.tiny_models import build_model

    model = build_model(tempfile.mkdtemp(prefix=f"gpu-check-{arch}-"), arch)
    prompts = [{"prompt_token_ids": list(range(3, 3 + n))} for n in lengths]
    ref = LLM(model, backend="cpu", **COMMON).generate(prompts, _greedy(max_tokens),
                                                       use_tqdm=False)
    return model, ref


def step_greedy(dry: bool) -> dict[str, Any]:
    backend = "triton-interpret" if dry else "cuda"
    max_tokens = 8 if dry else 24
    rows = []
    for arch in DRY_ARCHS if dry else ARCHS:
        model, ref = _reference(arch, (1, 7, 40), max_tokens)
        for graphs in ("1", "0"):
            os.environ["QUIRE_CUDA_GRAPHS"] = graphs
            rows.append({"arch": arch, "cuda_graphs": graphs == "1",
                         **_agreement(model, backend, ref, max_tokens)})
    return {"ok": all(r["ok"] for r in rows), "backend": backend, "rows": rows}


def step_jax(dry: bool) -> dict[str, Any]:
    import jax

    model, ref = _reference("llama", (1, 9, 30), 8)
    result: dict[str, Any] = {"jax_platform": jax.default_backend(),
                              "devices": [str(d) for d in jax.devices()]}
    for attention in ("reference",) if dry else ("reference", "pallas"):
        os.environ["QUIRE_TPU_ATTENTION"] = attention
        try:
            result[attention] = _agreement(model, "tpu", ref, 8)
        except Exception as exc:  # the Pallas TPU kernel may not lower on a GPU: record it
            result[attention] = {"ok": False, "error": f"{type(exc).__name__}: {exc}"[:500]}
    result["ok"] = result["reference"]["ok"]
    return result


def step_throughput(dry: bool) -> dict[str, Any]:
    from quire.cli import main as quire_main
    from quire.testing.tiny_models import build_model

    if dry:
        model = build_model(tempfile.mkdtemp(prefix="gpu-check-bench-"), "llama")
        args = ["--backend", "triton-interpret", "--dtype", "float32", "--num-requests", "4",
                "--min-len", "4", "--max-len", "12", "--max-model-len", "256"]
    else:  # ~1.2B parameters: hidden 2048, 16 layers, GQA 16:8, vocabulary 32000
        model = build_model(tempfile.mkdtemp(prefix="gpu-check-1b-"), "llama",
                            hidden_size=2048, num_layers=16, num_heads=16, num_kv_heads=8,
                            intermediate_size=5632, max_position_embeddings=2048,
                            weight_scale=1.0, logit_scale=1.0, model_vocab_size=32000)
        args = ["--backend", "cuda", "--dtype", "bfloat16", "--num-requests", "64",
                "--min-len", "32", "--max-len", "256", "--kv-cache-gib", "8"]
    out_dir = tempfile.mkdtemp(prefix="gpu-check-bench-out-")
    code = quire_main(["bench", "throughput", "--model", model, "--baselines", "hf-static",
                       "--output-dir", out_dir, *args])
    (path,) = glob.glob(os.path.join(out_dir, "throughput-*.json"))
    with open(path, encoding="utf-8") as f:
        doc = json.load(f)
    rows = [{k: r.get(k) for k in ("system", "output_tok_per_s", "elapsed_s")}
            for r in doc["results"]]
    return {"ok": code == 0, "rows": rows}


def step_attention(dry: bool, out: str) -> dict[str, Any]:
    tmp = tempfile.mkdtemp(prefix="gpu-check-attn-")
    cmd = [sys.executable, os.path.join(ROOT, "benchmarks", "gpu_attention.py"),
           "--smoke" if dry else "--quick", "--out", tmp]
    subprocess.run(cmd, check=True, cwd=ROOT)
    (path,) = glob.glob(os.path.join(tmp, "gpu-*.json"))
    with open(path, encoding="utf-8") as f:
        result = json.load(f)
    with open(os.path.join(tmp, "gpu_results.md"), encoding="utf-8") as f:
        table = f.read()
    with open(os.path.join(out, "gpu_results.md"), "w", encoding="utf-8") as f:
        f.write(table)
    longest = max(r["context"] for r in result["decode"])
    result["decode_best_fraction_at_longest"] = max(
        r["fraction_of_copy"] for r in result["decode"] if r["context"] == longest)
    result["prefill_worst_time_ratio"] = max(r["time_ratio"] for r in result["prefill"])
    result["ok"] = True
    return result


def step_triton_tests(dry: bool, out: str) -> dict[str, Any]:
    select = ["-k", "write_kv or (unified and float32 and not 256)"] if dry else []
    cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
           os.path.join(ROOT, "tests", "triton"), *select]
    done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    tail = done.stdout.strip().splitlines()[-1] if done.stdout.strip() else done.stderr[-300:]
    return {"ok": done.returncode == 0, "summary": tail}


STEPS = ("triton_tests", "greedy", "attention", "throughput", "jax")


# -- the driver ----------------------------------------------------------------------------
def run_step(name: str, out: str, dry: bool, log) -> dict[str, Any]:
    env = dict(os.environ)
    if dry:
        env["TRITON_INTERPRET"] = "1"
        env.setdefault("JAX_PLATFORMS", "cpu")
    limit = LIMITS[name] * (4 if dry else 1)
    cmd = [sys.executable, os.path.abspath(__file__), out, "--step", name] + \
        (["--dry"] if dry else [])
    start = time.monotonic()
    try:
        done = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True,
                              timeout=limit)
        log.write(f"===== {name} (exit {done.returncode})\n{done.stdout}\n{done.stderr}\n")
        lines = [ln for ln in done.stdout.splitlines() if ln.startswith("RESULT ")]
        result = json.loads(lines[-1][len("RESULT "):]) if lines else \
            {"ok": False, "error": (done.stderr.strip().splitlines() or ["no output"])[-1]}
    except subprocess.TimeoutExpired as exc:
        log.write(f"===== {name} (timeout after {limit}s)\n{exc.stdout or ''}\n")
        result = {"ok": False, "error": f"timed out after {limit}s"}
    result["seconds"] = round(time.monotonic() - start, 1)
    return result


def headline(name: str, r: dict[str, Any]) -> str:
    if "error" in r and not r.get("ok"):
        return r["error"][:120]
    if name == "triton_tests":
        return r["summary"]
    if name == "greedy":
        bad = [f"{x['arch']}/graphs {'on' if x['cuda_graphs'] else 'off'}"
               for x in r["rows"] if not x["ok"]]
        return f"{len(r['rows']) - len(bad)}/{len(r['rows'])} equal" + \
            (f"; differ: {', '.join(bad)}" if bad else "")
    if name == "attention":
        return (f"copy {r['copy_GBps']:.0f} GB/s; decode at longest context "
                f"{r['decode_best_fraction_at_longest']:.0%} of copy (target >= 70%); prefill "
                f"worst {r['prefill_worst_time_ratio']:.2f}x SDPA (target <= 1.3x)")
    if name == "throughput":
        return "; ".join(f"{x['system']}: {x['output_tok_per_s']:.0f} out tok/s"
                         for x in r["rows"])
    if name == "jax":
        pallas = r.get("pallas", {})
        return (f"JAX on {r['jax_platform']}: reference attention "
                f"{'equal' if r['reference'].get('ok') else 'differs'}" +
                (f"; pallas {'equal' if pallas.get('ok') else 'failed'}" if pallas else ""))
    return ""


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", help="folder for results.json, summary.md, check.log")
    parser.add_argument("--dry", action="store_true", help="CPU dry run: tiny, interpreted")
    parser.add_argument("--step", choices=STEPS, help=argparse.SUPPRESS)
    parser.add_argument("--only", default=",".join(STEPS), help="comma list of steps")
    args = parser.parse_args()
    os.makedirs(args.out, exist_ok=True)
    if args.step:  # a child: run one step, print its result
        fn = globals()[f"step_{args.step}"]
        takes_out = args.step in ("attention", "triton_tests")
        result = fn(args.dry, args.out) if takes_out else fn(args.dry)
        sys.stdout.write("RESULT " + json.dumps(result) + "\n")
        return 0
    import platform

    import torch

    device = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu (dry run)"
    results: dict[str, Any] = {"date": time.strftime("%Y-%m-%d %H:%M"), "device": device,
                               "torch": torch.__version__, "dry": args.dry,
                               "host": platform.processor() or platform.machine()}
    with open(os.path.join(args.out, "check.log"), "w", encoding="utf-8") as log:
        for name in [s for s in args.only.split(",") if s]:
            results[name] = run_step(name, args.out, args.dry, log)
            log.flush()
    lines = [f"## GPU check, {results['date']}, {device}, torch {results['torch']}"
             + (" (dry run)" if args.dry else ""), "",
             "| step | ok | seconds | result |", "|---|---|---|---|"]
    for name in STEPS:
        if name in results:
            r = results[name]
            lines.append(f"| {name} | {'yes' if r.get('ok') else 'NO'} | {r['seconds']} | "
                         f"{headline(name, r)} |")
    summary = "\n".join(lines) + "\n"
    with open(os.path.join(args.out, "results.json"), "w", encoding="utf-8") as f:
        json.dump(results, f, indent=2)
    with open(os.path.join(args.out, "summary.md"), "w", encoding="utf-8") as f:
        f.write(summary)
    sys.stdout.write(summary)
    return 0 if all(results[n].get("ok") for n in STEPS if n in results) else 1


if __name__ == "__main__":
    sys.exit(main())
