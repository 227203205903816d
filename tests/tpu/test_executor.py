"""The tpu executor end to end on JAX's CPU device: greedy equal to the cpu backend for
every architecture, the Pallas kernel in the loop, bounded compilations, selection."""

from __future__ import annotations

import numpy as np
import pytest

from quire import LLM, SamplingParams
from quire.plugins.manager import load_plugins
from quire.plugins.selection import select_backend

NEAR_TIE = 1e-3
PROMPTS = ["Hello world", "the scheduler serves paged attention blocks to every request",
           "a", "Paris is the capital of France, a city on a river", "one two three four"]


def assert_same_greedy(ref_outs, got_outs) -> int:
    """Token equality up to the first step where the reference's top-2 logprobs nearly tie;
    returns the number of tokens compared."""
    compared = 0
    for r, g in zip(ref_outs, got_outs):
        ref_ids = r.outputs[0].token_ids
        n = len(ref_ids)
        for i, entry in enumerate(r.outputs[0].logprobs):
            top = sorted((lp.logprob for lp in entry.values()), reverse=True)
            if top[0] - top[1] < NEAR_TIE:
                n = i
                break
        assert g.outputs[0].token_ids[:n] == ref_ids[:n], (r.prompt, g.outputs[0].token_ids,
                                                           ref_ids)
        compared += n
    return compared


def _run(model_dir: str, backend: str, **kwargs):
    llm = LLM(model_dir, backend=backend, dtype="float32", block_size=16, num_blocks=24,
              max_num_batched_tokens=64, **kwargs)
    params = SamplingParams(temperature=0, max_tokens=12, ignore_eos=True, logprobs=2)
    return llm, llm.generate(PROMPTS, params, use_tqdm=False)


@pytest.mark.parametrize("arch,kwargs", [
    ("llama", {}), ("llama", {"tie_word_embeddings": True}), ("mistral", {}), ("qwen2", {}),
    ("qwen3", {}), ("gemma2", {}), ("gemma3", {}), ("phi3", {}), ("mixtral", {}),
    ("qwen3_moe", {}),
])
def test_greedy_matches_cpu_backend(model_factory, arch, kwargs):
    model_dir = model_factory(arch, **kwargs)
    _, ref = _run(model_dir, "cpu")
    llm, got = _run(model_dir, "tpu")
    assert llm.engine.backend_name == "tpu"
    assert assert_same_greedy(ref, got) >= 0.6 * 12 * len(PROMPTS)
    # logprobs come back too, close to the cpu backend's
    np.testing.assert_allclose(got[0].outputs[0].cumulative_logprob,
                               ref[0].outputs[0].cumulative_logprob, rtol=1e-3, atol=1e-3)
    assert llm.engine.stats().num_used_blocks == 0


@pytest.mark.parametrize("arch", ["qwen3", "gemma2"])
def test_pallas_kernel_in_the_loop(model_factory, monkeypatch, arch):
    """The whole executor with the Pallas kernel (TPU interpreter) instead of the jnp one,
    including chunked prefill (a 64-token budget) and prefix-cache hits; gemma2: soft-capped
    scores and sliding-window layers in the kernel."""
    monkeypatch.setenv("QUIRE_TPU_ATTENTION", "pallas-interpret")
    model_dir = model_factory(arch)
    _, ref = _run(model_dir, "cpu")
    llm, got = _run(model_dir, "tpu")
    assert llm.engine.executor.attention_choice == "pallas-interpret"
    assert assert_same_greedy(ref, got) >= 0.6 * 12 * len(PROMPTS)


def test_compilations_bounded_by_buckets(model_factory):
    llm = LLM(model_factory("llama"), backend="tpu", dtype="float32", block_size=16,
              num_blocks=64, max_num_batched_tokens=64, max_num_seqs=8)
    executor = llm.engine.executor
    params = SamplingParams(temperature=0, max_tokens=6, ignore_eos=True)
    llm.generate(["one two three four five six", "a b", "hello"], params, use_tqdm=False)
    first = executor.num_compilations()
    caps = executor.capabilities()
    assert 1 <= first <= len(caps.token_buckets) * len(caps.request_buckets)
    # New prompt lengths and counts that fall in the same buckets: nothing new compiles.
    llm.generate(["seven eight nine ten", "the cache", "paged blocks", "x"], params,
                 use_tqdm=False)
    assert executor.num_compilations() == first


def test_selection_is_explicit_only_without_tpu(monkeypatch):
    from quire.backends.tpu.plugin import tpu_present

    if tpu_present():
        pytest.skip("this machine has a TPU: tpu is chosen automatically here")
    monkeypatch.delenv("QUIRE_BACKEND", raising=False)
    plugins = load_plugins()
    assert select_backend(plugins, None).spec.name != "tpu"
    chosen = select_backend(plugins, "tpu")
    assert chosen.spec.name == "tpu"
    assert "CPU device" in chosen.availability.reason
    monkeypatch.setenv("QUIRE_BACKEND", "tpu")
    assert select_backend(plugins, None).spec.name == "tpu"


def test_bf16_runs_and_unsupported_dtype_is_clear(model_factory):
    model_dir = model_factory("llama")
    llm = LLM(model_dir, backend="tpu", dtype="bfloat16", block_size=16, num_blocks=16)
    out = llm.generate(["Hello"], SamplingParams(temperature=0, max_tokens=4, ignore_eos=True),
                       use_tqdm=False)
    assert len(out[0].outputs[0].token_ids) == 4
    with pytest.raises(ValueError, match="float16"):
        LLM(model_dir, backend="tpu", dtype="float16", block_size=16, num_blocks=16)


def test_tpu_path_imports_no_torch(model_factory):
    """Weights, model, kernel and sampler run with torch never imported (a TPU VM need not
    install it): the engine driven with token ids and a framework-free tokenizer."""
    import subprocess
    import sys

    code = (
        "import sys\n"
        "from quire.backends.tpu.executor import TpuExecutor\n"
        "from quire.core.config import CacheConfig, EngineConfig, SchedulerConfig\n"
        "from quire.core.engine import LLMEngine\n"
        "from quire.core.sampling_params import SamplingParams\n"
        "from tests.core.fakes import CharTokenizer\n"
        "ex = TpuExecutor(EngineConfig(model=sys.argv[1], backend='tpu'))\n"
        "info = ex.load_model(sys.argv[1], 'float32')\n"
        "ex.allocate_kv_cache(16, 16)\n"
        "engine = LLMEngine(ex, CharTokenizer(), info, scheduler_config=SchedulerConfig(\n"
        "    max_num_seqs=8, max_num_batched_tokens=64, max_model_len=128),\n"
        "    cache_config=CacheConfig(num_blocks=16, block_size=16))\n"
        "engine.add_request([5, 6, 7, 8], SamplingParams(temperature=0, max_tokens=5,\n"
        "                                                ignore_eos=True), 'r')\n"
        "outs = []\n"
        "while engine.has_unfinished_requests():\n"
        "    outs += engine.step()\n"
        "assert len(outs[-1].outputs[0].token_ids) == 5, outs[-1]\n"
        "assert 'torch' not in sys.modules, 'torch was imported'\n"
    )
    root = __file__.rsplit("/tests/", 1)[0]
    proc = subprocess.run([sys.executable, "-c", code, model_factory("llama")], cwd=root,
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-2000:]


def test_plugin_model_is_refused_with_a_message(model_factory, tmp_path):
    """quire_register_models registers torch modules: the JAX family says so, not silently."""
    import json
    import shutil

    from quire.backends.tpu.executor import TpuExecutor
    from quire.core.config import EngineConfig

    src = model_factory("llama")
    dst = tmp_path / "plugin-model"
    shutil.copytree(src, dst)
    config = json.loads((dst / "config.json").read_text())
    config["architectures"] = ["MyLlamaForCausalLM"]
    (dst / "config.json").write_text(json.dumps(config))
    ex = TpuExecutor(EngineConfig(model=str(dst), backend="tpu"),
                     {"MyLlamaForCausalLM": object})
    with pytest.raises(ValueError, match="comes from a plugin"):
        ex.load_model(str(dst), "float32")
