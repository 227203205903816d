"""GPU benchmark of quire's Triton paged attention (cuda / rocm backends).

    python benchmarks/gpu_attention.py                # on a GPU: full sweep, writes results
    python benchmarks/gpu_attention.py --quick        # on a GPU: ~4 minutes
    TRITON_INTERPRET=1 python benchmarks/gpu_attention.py --smoke   # CPU: tiny shapes

1. correctness: the kernels against the reference on a few ragged cases;
2. copy bandwidth: a device-to-device copy of a large buffer (the roofline);
3. decode: achieved KV read bandwidth of one decode step, contexts 512-32k, batch 1-256,
   as a fraction of (2);
4. prefill: causal attention TFLOP/s against torch's scaled_dot_product_attention on the
   same shapes (dense q/k/v for SDPA, a paged cache for ours);
5. end to end: decode throughput of a random Llama with CUDA graphs on and off.
Results go to benchmarks/results/gpu-<device>-<date>.json and a table in
benchmarks/GPU_RESULTS.md. Targets (issue 4): decode >= 70% of copy bandwidth at long
context; prefill time within 1.3x of SDPA's.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import statistics
import sys
import tempfile
import time

import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from quire.testing.reference import paged_attention as reference  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))


def timed(fn, repeats: int) -> float:
    """Median seconds of fn() (CUDA events on a GPU)."""
    fn()
    times = []
    for _ in range(repeats):
        if torch.cuda.is_available():
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            torch.cuda.synchronize()
            times.append(start.elapsed_time(end) / 1e3)
        else:
            t0 = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t0)
    return statistics.median(times)


def paged_case(seq_lens, query_lens, hq, hkv, d, bs, dtype, device):
    """A random paged cache holding each sequence in shuffled blocks."""
    blocks_per_seq = [-(-s // bs) for s in seq_lens]
    width = max(blocks_per_seq)
    num_blocks = 1 + sum(blocks_per_seq)
    kc = torch.randn(num_blocks, bs, hkv, d, device=device, dtype=dtype)
    vc = torch.randn(num_blocks, bs, hkv, d, device=device, dtype=dtype)
    perm = (torch.randperm(num_blocks - 1) + 1).int()
    tables = torch.zeros(len(seq_lens), width, dtype=torch.int32)
    used = 0
    for i, n in enumerate(blocks_per_seq):
        tables[i, :n] = perm[used : used + n]
        used += n
    q = torch.randn(sum(query_lens), hq, d, device=device, dtype=dtype)
    qsl = torch.tensor([0] + list(torch.tensor(query_lens).cumsum(0).tolist()),
                       dtype=torch.int32)
    lens = torch.tensor(seq_lens, dtype=torch.int32)
    return q, kc, vc, tables.to(device), qsl.to(device), lens.to(device)


def check_correctness(device, dtype) -> float:
    from quire.backends.triton.attention import paged_attention

    worst = 0.0
    for seq_lens, qlens in (([300, 17, 1], [1, 17, 1]), ([129, 64], [40, 64]), ([1000], [1])):
        case = paged_case(seq_lens, qlens, 8, 2, 128, 16, dtype, device)
        for splits in (None, 1, 4) if max(qlens) == 1 else (None,):
            got = paged_attention(*case, scale=128**-0.5, num_splits=splits)
            want = reference(*(t.cpu() for t in case), scale=128**-0.5)
            err = (got.float().cpu() - want.float()).abs().max().item()
            worst = max(worst, err)
            assert err < 5e-2, f"kernel disagrees with the reference: {err}"
    return worst


def copy_bandwidth(device, size_bytes: int, repeats: int) -> float:
    src = torch.empty(size_bytes // 2, dtype=torch.float16, device=device)
    dst = torch.empty_like(src)
    seconds = timed(lambda: dst.copy_(src), repeats)
    return 2 * size_bytes / seconds  # read + write


def decode_sweep(device, dtype, contexts, batches, shape, repeats, copy_bw, budget):
    from quire.backends.triton.attention import paged_attention

    hq, hkv, d, bs = shape
    elem = torch.tensor([], dtype=dtype).element_size()
    rows = []
    for ctx in contexts:
        for batch in batches:
            kv_bytes = 2 * batch * ctx * hkv * d * elem
            if kv_bytes > budget:
                continue
            case = paged_case([ctx] * batch, [1] * batch, hq, hkv, d, bs, dtype, device)
            seconds = timed(lambda case=case, ctx=ctx: paged_attention(
                *case, scale=d**-0.5, max_query_len=1, max_seq_len=ctx), repeats)
            bw = kv_bytes / seconds
            rows.append({"context": ctx, "batch": batch, "us": seconds * 1e6,
                         "GBps": bw / 1e9, "fraction_of_copy": bw / copy_bw})
            del case
    return rows


def prefill_sweep(device, dtype, lengths, tokens_per_batch, shape, repeats):
    import torch.nn.functional as F

    from quire.backends.triton.attention import paged_attention

    hq, hkv, d, bs = shape
    rows = []
    for length in lengths:
        batch = max(1, tokens_per_batch // length)
        case = paged_case([length] * batch, [length] * batch, hq, hkv, d, bs, dtype, device)
        ours = timed(lambda case=case, length=length: paged_attention(
            *case, scale=d**-0.5, max_query_len=length, max_seq_len=length), repeats)
        q = torch.randn(batch, hq, length, d, device=device, dtype=dtype)
        k = torch.randn(batch, hkv, length, d, device=device, dtype=dtype)
        v = torch.randn_like(k)
        sdpa = timed(lambda q=q, k=k, v=v: F.scaled_dot_product_attention(
            q, k, v, is_causal=True, enable_gqa=True), repeats)
        flops = 4 * batch * hq * d * length * (length + 1) / 2
        rows.append({"length": length, "batch": batch, "ours_us": ours * 1e6,
                     "sdpa_us": sdpa * 1e6, "ours_TFLOPs": flops / ours / 1e12,
                     "sdpa_TFLOPs": flops / sdpa / 1e12, "time_ratio": ours / sdpa})
        del case, q, k, v
    return rows


def end_to_end(backend, model_kwargs, num_requests, prompt_len, output_len):
    from quire import LLM, SamplingParams
    from quire.testing.tiny_models import build_model

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        model_dir = build_model(tmp, "llama", **model_kwargs)
        prompts = [[(7 * i + j) % 400 + 10 for j in range(prompt_len)]
                   for i in range(num_requests)]
        params = SamplingParams(temperature=0, max_tokens=output_len, ignore_eos=True)
        for graphs in ("0", "1"):
            os.environ["QUIRE_CUDA_GRAPHS"] = graphs
            llm = LLM(model_dir, backend=backend, dtype="bfloat16", block_size=16,
                      num_blocks=4096)
            llm.generate(prompts[:4], SamplingParams(max_tokens=8), use_tqdm=False)  # warm
            t0 = time.perf_counter()
            llm.generate(prompts, params, use_tqdm=False)
            seconds = time.perf_counter() - t0
            rows.append({"cuda_graphs": graphs == "1",
                         "output_tok_per_s": num_requests * output_len / seconds})
            del llm
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true", help="tiny shapes (CPU interpreter)")
    parser.add_argument("--quick", action="store_true",
                        help="a GPU sweep that fits ~4 minutes (scripts/gpu_check.sh)")
    parser.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float16"])
    parser.add_argument("--out", default=os.path.join(HERE, "results"))
    args = parser.parse_args()
    gpu = torch.cuda.is_available()
    device = torch.device("cuda" if gpu else "cpu")
    dtype = getattr(torch, args.dtype)
    if not gpu and not args.smoke:
        parser.error("no GPU: run with --smoke (and TRITON_INTERPRET=1) on a CPU")
    if args.smoke:
        shape, contexts, batches, lengths = (8, 2, 64, 16), [64, 256], [1, 4], [32, 64]
        repeats, tokens, budget, copy_size = 1, 64, 1 << 30, 1 << 24
        e2e = dict(model_kwargs={"hidden_size": 64, "num_layers": 2}, num_requests=4,
                   prompt_len=8, output_len=4)
    else:
        shape = (32, 8, 128, 16)  # Llama-3-8B attention: 32 query / 8 KV heads of 128
        contexts = [512, 1024, 2048, 4096, 8192, 16384, 32768]
        batches, lengths = [1, 4, 16, 64, 256], [512, 1024, 2048, 4096, 8192]
        free, _ = torch.cuda.mem_get_info()
        repeats, tokens, budget, copy_size = 20, 16384, int(free * 0.4), 1 << 30
        e2e = dict(model_kwargs={"hidden_size": 2048, "num_layers": 8, "num_heads": 16,
                                 "num_kv_heads": 4, "intermediate_size": 5632,
                                 "max_position_embeddings": 4096},
                   num_requests=64, prompt_len=128, output_len=256)
        if args.quick:
            contexts, batches, lengths, repeats = [1024, 4096, 16384], [1, 16, 128], \
                [1024, 4096], 10
            e2e.update(num_requests=32, output_len=128)
    backend = ("rocm" if torch.version.hip else "cuda") if gpu else "triton-interpret"
    name = torch.cuda.get_device_name(0) if gpu else "cpu-interpreter"
    result = {"device": name, "date": datetime.date.today().isoformat(),
              "torch": torch.__version__, "dtype": args.dtype, "shape_hq_hkv_d_bs": shape,
              "smoke": args.smoke}
    result["max_abs_error"] = check_correctness(device, dtype)
    copy_bw = copy_bandwidth(device, copy_size, repeats)
    result["copy_GBps"] = copy_bw / 1e9
    result["decode"] = decode_sweep(device, dtype, contexts, batches, shape, repeats, copy_bw,
                                    budget)
    result["prefill"] = prefill_sweep(device, dtype, lengths, tokens, shape, repeats)
    result["end_to_end"] = end_to_end(backend, **e2e)
    write(result, args.out, args.smoke)


def write(result: dict, out_dir: str, smoke: bool) -> None:
    os.makedirs(out_dir, exist_ok=True)
    slug = "".join(c if c.isalnum() else "-" for c in result["device"]).strip("-").lower()
    path = os.path.join(out_dir, f"gpu-{slug}-{result['date']}.json")
    with open(path, "w", encoding="utf-8") as f:
        json.dump(result, f, indent=2)
    lines = [f"## {result['device']}, {result['date']} ({result['dtype']})", "",
             f"copy bandwidth {result['copy_GBps']:.0f} GB/s; max abs error vs reference "
             f"{result['max_abs_error']:.2e}", "",
             "| context | batch | decode us | GB/s | of copy bw |", "|---|---|---|---|---|"]
    lines += [f"| {r['context']} | {r['batch']} | {r['us']:.1f} | {r['GBps']:.0f} | "
              f"{r['fraction_of_copy']:.0%} |" for r in result["decode"]]
    lines += ["", "| prefill length | batch | ours TFLOP/s | SDPA TFLOP/s | time ours/SDPA |",
              "|---|---|---|---|---|"]
    lines += [f"| {r['length']} | {r['batch']} | {r['ours_TFLOPs']:.1f} | "
              f"{r['sdpa_TFLOPs']:.1f} | {r['time_ratio']:.2f} |" for r in result["prefill"]]
    lines += ["", "| CUDA graphs | output tok/s |", "|---|---|"]
    lines += [f"| {'on' if r['cuda_graphs'] else 'off'} | {r['output_tok_per_s']:.0f} |"
              for r in result["end_to_end"]]
    table = "\n".join(lines) + "\n"
    with open(os.path.join(out_dir, "gpu_results.md"), "w", encoding="utf-8") as f:
        f.write(table)
    if not smoke:
        with open(os.path.join(HERE, "GPU_RESULTS.md"), "a", encoding="utf-8") as f:
            f.write("\n" + table)
    sys.stdout.write(table + f"\nwrote {path}\n")


if __name__ == "__main__":
    main()
