"""Scale-out on this host, side by side on the issue-7 workload (64 requests, lengths
log-uniform in [32, 256], seed 0) with the bench's random Llama (`.bench-model`, built by
`quire bench` on first use):

- tensor parallelism: TP=1 (one process, all cores) against TP=2 (one process per rank,
  cores split), offline output tokens/s, and rank 0's time in collectives per step;
- data parallelism: `quire serve --data-parallel-size 1` against `2`, all requests at
  once through `quire bench serve`'s client.

    python benchmarks/scale_out.py [--repeats 2] [--dtype bfloat16] [--only tp|dp]

Runs interleave (TP=1, TP=2, TP=1, ...); prints one table and writes JSON to
benchmarks/results/scale-out-<date>.json.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import time

import httpx

from quire.bench.commands import BENCH_MODEL_DIR, bench_model
from quire.bench.quire_runner import run_quire
from quire.bench.report import machine
from quire.bench.workload import sharegpt_like


def _tp(model: str, tp: int, dtype: str) -> dict:
    from quire import LLM

    llm = LLM(model, dtype=dtype, block_size=16, tensor_parallel_size=tp)
    try:
        workload = sharegpt_like(64, llm.engine.model_info.vocab_size, 32, 256, seed=0)
        comm = getattr(getattr(llm.engine.executor, "driver", None), "comm", None)
        steps0, comm0 = llm.engine.num_steps, comm.seconds if comm is not None else 0.0
        if comm is not None and hasattr(comm, "wait_seconds"):
            comm.wait_seconds = 0.0
        row = run_quire(llm, workload, f"TP={tp}")
        row["steps"] = llm.engine.num_steps - steps0
        if comm is not None:
            row["comm_s"] = comm.seconds - comm0
            row["comm_ms_per_step"] = 1e3 * row["comm_s"] / max(row["steps"], 1)
            if hasattr(comm, "wait_seconds"):  # of which waiting for the other rank
                row["comm_wait_ms_per_step"] = 1e3 * comm.wait_seconds / max(row["steps"], 1)
        return row
    finally:
        llm.engine.shutdown()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _dp(model: str, dp: int, dtype: str) -> dict:
    from quire.bench.serve_client import run_serve

    port = _free_port()
    server = subprocess.Popen(
        [sys.executable, "-m", "quire.cli", "serve", model, "--port", str(port),
         "--dtype", dtype, "--block-size", "16", "--data-parallel-size", str(dp)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 600
        while True:
            try:
                if httpx.get(url + "/health", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if server.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"server with --data-parallel-size {dp} did not start")
            time.sleep(0.5)
        args = argparse.Namespace(url=url, num_requests=64, min_len=32, max_len=256,
                                  request_rate=None, concurrency=None, seed=0)
        row = run_serve(args)
        row["system"] = f"DP={dp}"
        return row
    finally:
        server.terminate()
        server.wait(timeout=60)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--dtype", default="bfloat16")
    parser.add_argument("--only", choices=["tp", "dp"], default=None)
    args = parser.parse_args()
    model = bench_model(argparse.Namespace(model=None, random_arch="llama"))
    assert model == BENCH_MODEL_DIR
    rows = []
    for r in range(args.repeats):
        for kind, sizes, run in (("tp", (1, 2), _tp), ("dp", (1, 2), _dp)):
            if args.only not in (None, kind):
                continue
            for n in sizes:
                row = run(model, n, args.dtype)
                row["round"] = r + 1
                rows.append(row)
                print(f"round {r + 1} {row['system']}: {row['output_tok_per_s']:.1f} output "
                      f"tok/s" + (f", collectives {row['comm_ms_per_step']:.2f} ms/step of "
                                  f"{1e3 * row['elapsed_s'] / row['steps']:.1f}"
                                  if "comm_ms_per_step" in row else "")
                      + (f" ({row['comm_wait_ms_per_step']:.2f} waiting for the other rank)"
                         if "comm_wait_ms_per_step" in row else ""), flush=True)
    out = os.path.join("benchmarks", "results",
                       f"scale-out-{time.strftime('%Y%m%d-%H%M%S')}.json")
    with open(out, "w") as f:
        json.dump({"machine": machine(), "dtype": args.dtype,
                   "rows": rows}, f, indent=1)
    print("written:", out)


if __name__ == "__main__":
    main()
