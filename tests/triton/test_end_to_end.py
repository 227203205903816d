"""The Triton attention path end to end: greedy equal to the cpu backend (on a GPU: the
cuda/rocm backend, graphs on and off; on a CPU: the triton-interpret backend)."""

from __future__ import annotations

import pytest
import torch

from quire import LLM, SamplingParams
from tests.tpu.test_executor import PROMPTS, assert_same_greedy

GPU_BACKEND = "rocm" if torch.version.hip else "cuda"


def _generate(model_dir: str, backend: str, **kwargs):
    llm = LLM(model_dir, backend=backend, dtype="float32", block_size=16, num_blocks=24,
              max_num_batched_tokens=64, **kwargs)
    params = SamplingParams(temperature=0, max_tokens=12, ignore_eos=True, logprobs=2)
    return llm, llm.generate(PROMPTS, params, use_tqdm=False)


@pytest.mark.parametrize("arch", ["llama", "mistral", "qwen3", "gemma2", "gemma3", "phi3",
                                  "mixtral", "qwen3_moe"])
def test_interpreted_triton_greedy_matches_cpu(model_factory, arch):
    if not torch.cuda.is_available():
        model_dir = model_factory(arch)
        _, ref = _generate(model_dir, "cpu")
        llm, got = _generate(model_dir, "triton-interpret")
        assert llm.engine.backend_name == "triton-interpret"
        assert assert_same_greedy(ref, got) >= 0.6 * 12 * len(PROMPTS)
        assert llm.engine.stats().num_used_blocks == 0
    else:
        pytest.skip("a GPU is present: test_gpu_greedy_matches_cpu runs the real path")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA or ROCm GPU")
@pytest.mark.parametrize("graphs", ["1", "0"])
def test_gpu_greedy_matches_cpu(model_factory, monkeypatch, graphs):
    monkeypatch.setenv("QUIRE_CUDA_GRAPHS", graphs)
    model_dir = model_factory("llama")
    _, ref = _generate(model_dir, "cpu")
    llm, got = _generate(model_dir, GPU_BACKEND)
    assert assert_same_greedy(ref, got) >= 0.6 * 12 * len(PROMPTS)
    captured = llm.engine.executor.graphs.captured if graphs == "1" else {}
    assert bool(captured) == (graphs == "1")
