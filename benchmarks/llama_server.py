"""quire serve against llama.cpp's server on the same GGUF file, side by side: the issue-7
workload (64 requests, prompt and output lengths log-uniform in [32, max-len], random
token-id prompts, fixed output lengths, all at once) through the same streaming client
(`quire bench serve`'s), greedy.

llama-server is built from the llama.cpp source vendored in llama-cpp-python's sdist (the
same llama.cpp as `quire bench latency --baselines llama.cpp`), with the CPU's native ISA:

    pip download llama-cpp-python==0.3.36 --no-binary :all: --no-deps -d /tmp/llsrc
    tar xzf /tmp/llsrc/llama_cpp_python-0.3.36.tar.gz -C /tmp/llsrc
    cd /tmp/llsrc/llama_cpp_python-0.3.36/vendor/llama.cpp
    cmake -B build -G Ninja -DCMAKE_BUILD_TYPE=Release -DLLAMA_CURL=OFF -DGGML_NATIVE=ON \\
        -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_SERVER=ON
    cmake --build build -j --target llama-server

    python benchmarks/llama_server.py --llama-server .../build/bin/llama-server \\
        [--model FILE.gguf] [--parallel 16] [--repeats 2] [--max-len 128]

Runs interleave (quire, llama.cpp, quire, ...); each server gets every core of the machine
(llama-server -t <cores>). Prints a table and writes JSON to
benchmarks/results/llama-server-<date>.json.
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

from quire.bench.report import machine
from quire.bench.serve_client import run_serve


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait(url: str, proc: subprocess.Popen, timeout: float = 300.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode}")
        try:
            if httpx.get(url + "/health", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    raise TimeoutError("server did not become healthy")


def _serve(cmd: list[str], port: int, label: str, args: argparse.Namespace, vocab: int,
           log: str) -> dict:
    with open(log, "a") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        _wait(url, proc)
        client = argparse.Namespace(url=url, num_requests=args.num_requests,
                                    min_len=args.min_len, max_len=args.max_len,
                                    request_rate=None, concurrency=None, seed=0,
                                    vocab_size=vocab)
        return run_serve(client, label)
    finally:
        proc.terminate()
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--llama-server", required=True)
    ap.add_argument("--model", default=None, help="GGUF file (default: the bundled model)")
    ap.add_argument("--parallel", type=int, default=16, help="llama-server -np")
    ap.add_argument("--num-requests", type=int, default=64)
    ap.add_argument("--min-len", type=int, default=32)
    ap.add_argument("--max-len", type=int, default=128)
    ap.add_argument("--repeats", type=int, default=2)
    args = ap.parse_args()
    from quire.default_model import resolve_model
    from quire.models.checkpoint import open_checkpoint

    model = args.model or resolve_model(None)
    vocab = int(open_checkpoint(model)[0]["vocab_size"])  # (the weights are not read)
    cores = os.cpu_count() or 1
    ctx = args.parallel * 2 * (args.max_len + 1)
    log = "/tmp/llama-server-bench.log"
    rows = []
    for _ in range(args.repeats):
        port = _port()
        quire = os.path.join(os.path.dirname(sys.executable), "quire")
        rows.append(_serve([quire, "serve", "--model", model,
                            "--port", str(port)], port, "quire serve (cpu)", args, vocab, log))
        port = _port()
        rows.append(_serve([args.llama_server, "-m", model, "-np", str(args.parallel),
                            "-c", str(ctx), "-t", str(cores), "--port", str(port),
                            "--temp", "0"], port, f"llama-server -np {args.parallel}",
                           args, vocab, log))
    cpu = machine()
    print(f"CPU: {cpu}; model {os.path.basename(model)}")
    print("| system | output tok/s | total tok/s | TTFT p50 s | ITL p50 s | elapsed s |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['system']} | {r['output_tok_per_s']:.1f} | {r['total_tok_per_s']:.1f} | "
              f"{r['ttft_s_p50']:.3f} | {r['itl_s_p50']:.4f} | {r['elapsed_s']:.1f} |")
    os.makedirs("benchmarks/results", exist_ok=True)
    path = f"benchmarks/results/llama-server-{time.strftime('%Y%m%d-%H%M%S')}.json"
    with open(path, "w") as f:
        json.dump({"cpu": cpu, "cores": cores, "model": model, "args": vars(args),
                   "rows": rows}, f, indent=1)
    print("wrote", path)


if __name__ == "__main__":
    main()
