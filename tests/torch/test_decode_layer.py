"""The cpu backend's fused decode layer (decode_layer.py, layer_csrc.py): greedy tokens and
log-probabilities bit-identical to the module path it replaces, for each kind of projection
(lanes-packed, the rows kernel's layout, the bf16 GEMM), through prefill chunks (which take
the module path), batches of decode rows, speculative verification rows and preemption;
layers it does not cover keep the module path."""

from __future__ import annotations

import pytest

from quire import LLM, SamplingParams
from quire.backends.cpu import decode_layer, native

LANES = native.available() and native.module().lanes_supported()
needs_lanes = pytest.mark.skipif(not LANES, reason="this CPU has no AVX-512 BF16: no layer "
                                 "is packed for quire's kernels, so none is fused "
                                 "(test_install_elsewhere)")

PROMPTS = ["one two three four five six", "the cache serves the same prefix", "hello world",
           "paris is the capital of", "a b c d e f g h i j k l m n o p"]
PARAMS = SamplingParams(temperature=0, max_tokens=20, ignore_eos=True, logprobs=3)


def _spy(inner, taken):
    def spy(*args):
        out = inner(*args)
        taken.append(out is not None)
        return out
    return spy


def _run(path, monkeypatch, fused, lanes=True, stack=True, **kw):
    """stack=False: the layers fused one call each (the model's whole-stack path off)."""
    monkeypatch.setenv("QUIRE_CPU_FUSED_LAYER", "1" if fused else "0")
    monkeypatch.setenv("QUIRE_CPU_QUANT_LANES", "1" if lanes else "0")
    kw.setdefault("quantization", "int8")
    llm = LLM(path, num_blocks=kw.pop("num_blocks", 128), **kw)
    executor = llm.engine.executor  # (tensor parallelism: rank 0, in this process)
    model = getattr(executor, "driver", executor).model
    layers = [m for m in model.modules() if hasattr(m, "fast_path")]
    taken = []  # the steps (or layer calls) that took a fused path
    assert (model.layers_fast_path is not None) == fused
    model.layers_fast_path = _spy(model.layers_fast_path, taken) if stack and fused else None
    for layer in layers:
        if layer.fast_path is not None:
            layer.fast_path = _spy(layer.fast_path, taken)
    try:
        outs = llm.generate(PROMPTS, PARAMS, use_tqdm=False)
        preemptions = llm.engine.stats().num_preemptions
    finally:
        llm.engine.shutdown()  # (tensor parallelism: the workers and the process group)
    got = [(o.outputs[0].token_ids, [sorted(d.items()) for d in o.outputs[0].logprobs])
           for o in outs]
    return got, layers, taken, preemptions


def _check(path, monkeypatch, **kw):
    want, layers, taken, _ = _run(path, monkeypatch, False, **dict(kw))
    assert all(layer.fast_path is None for layer in layers) and not taken
    for stack in (True, False):  # the whole stack in one call; one call per layer
        got, layers, taken, _ = _run(path, monkeypatch, True, stack=stack, **dict(kw))
        assert all(layer.fast_path is not None for layer in layers)
        assert any(taken) and not all(taken)  # decode steps fused; prefill steps not
        assert got == want


@needs_lanes
@pytest.mark.parametrize("arch, dtype, quantization", [
    ("llama", "bfloat16", "int8"), ("llama", "float32", "int8"), ("qwen2", "bfloat16", "int8"),
    ("llama", "bfloat16", None), ("qwen2", "bfloat16", None)])  # None: the bf16 GEMM
def test_bit_identical_to_the_module_path(model_factory, monkeypatch, arch, dtype,
                                          quantization):
    path = model_factory(arch, hidden_size=128, intermediate_size=256, num_heads=4,
                         num_kv_heads=2)
    _check(path, monkeypatch, dtype=dtype, quantization=quantization)


@pytest.mark.parametrize("arch, dtype", [("llama", "bfloat16"), ("qwen2", "float32")])
def test_rows_kernel_layers_too(model_factory, monkeypatch, arch, dtype):
    # The rows kernel's layout (every CPU; the only packed one without AVX-512 BF16).
    path = model_factory(arch, hidden_size=128, intermediate_size=256, num_heads=4,
                         num_kv_heads=2)
    _check(path, monkeypatch, lanes=False, dtype=dtype)


@needs_lanes
def test_speculative_rows_and_preemption(model_factory, monkeypatch):
    path = model_factory("llama", hidden_size=128, intermediate_size=256, num_heads=4,
                         num_kv_heads=2)
    # (adaptive off: its back-off follows measured step times, so two runs could schedule
    # differently)
    spec = {"method": "ngram", "num_speculative_tokens": 3, "prompt_lookup_min": 2,
            "adaptive": False}
    # 12 blocks of 4 slots cannot hold five requests' ~30 tokens each at once.
    kw = {"speculative_config": spec, "num_blocks": 12, "block_size": 4}
    want, _, _, _ = _run(path, monkeypatch, False, **dict(kw))
    got, _, taken, preemptions = _run(path, monkeypatch, True, **dict(kw))
    assert any(taken) and preemptions > 0
    assert got == want


@pytest.mark.parametrize("quantization", [None, "int8"])
def test_tensor_parallel_layers_too(model_factory, monkeypatch, quantization):
    """TP=2 (the multi-process executor): o and down are RowParallel; the fused call hands
    their partial sums to the communicator's all-reduce at the same points, so both ranks'
    fused layers give the module path's tokens and log-probabilities bit for bit."""
    if not LANES and quantization is None:
        pytest.skip("this CPU has no AVX-512 BF16: bf16 layers are not on quire's GEMM")
    path = model_factory("llama", hidden_size=128, intermediate_size=256, num_heads=4,
                         num_kv_heads=2)
    kw = {"dtype": "bfloat16", "tensor_parallel_size": 2, "lanes": LANES}
    _check(path, monkeypatch, quantization=quantization, **kw)


def test_install_elsewhere(model_factory, monkeypatch):
    # float32 dense layers (oneDNN's), bf16 dense ones without quire's bf16 GEMM, MoE layers
    # and an 8-bit KV cache keep the module path.
    path = model_factory("llama", hidden_size=128, intermediate_size=256, num_heads=4,
                         num_kv_heads=2)
    for kw in ({"dtype": "float32"}, {"quantization": "int8", "kv_cache_dtype": "int8"},
               *(({},) if not LANES else ())):
        llm = LLM(path, num_blocks=32, **kw)
        model = llm.engine.executor.model
        assert decode_layer.install(model) == 0
        assert all(getattr(m, "fast_path", None) is None for m in model.modules())
        assert model.layers_fast_path is None
    moe = LLM(model_factory("mixtral", hidden_size=64, intermediate_size=64),
              quantization="int8", num_blocks=32)
    assert not any(decode_layer.eligible(m) for m in moe.engine.executor.model.modules())


def test_tensor_parallel_native_all_reduce(model_factory, monkeypatch):
    """The fused layers' all-reduces on the shared-memory segment without Python
    (comm_csrc.py) interleave with the communicator's own collectives and give the Python
    all-reduce's bits."""
    path = model_factory("llama", hidden_size=128, intermediate_size=256, num_heads=4,
                         num_kv_heads=2)
    runs = {}
    for native_ar in ("0", "1"):
        monkeypatch.setenv("QUIRE_CPU_NATIVE_ALLREDUCE", native_ar)
        monkeypatch.setenv("QUIRE_CPU_FUSED_LAYER", "1")
        llm = LLM(path, num_blocks=128, quantization="int8", dtype="bfloat16",
                  tensor_parallel_size=2)
        try:
            outs = llm.generate(PROMPTS, PARAMS, use_tqdm=False)
            state = llm.engine.executor.driver.comm.state.clone()
        finally:
            llm.engine.shutdown()
        runs[native_ar] = [(o.outputs[0].token_ids, o.outputs[0].logprobs) for o in outs]
        # state: [sequence number, ns in native all-reduces, ns of them waiting]
        assert (state[1] > 0) == (native_ar == "1") and state[0] > 0
    assert runs["1"] == runs["0"]


@needs_lanes
def test_plans_release_their_weights(model_factory):
    """The native side holds each fused layer's weights (its plan) only while the model
    lives: an engine shut down leaves none behind."""
    import gc
    import weakref

    llm = LLM(model_factory("llama", hidden_size=128, intermediate_size=256, num_heads=4,
                            num_kv_heads=2), quantization="int8", num_blocks=32)
    llm.generate(PROMPTS[:1], PARAMS, use_tqdm=False)
    model = llm.engine.executor.model
    assert model.layers_fast_path is not None
    weight = weakref.ref(model.layers[0].input_layernorm.weight)
    del model
    llm.engine.shutdown()
    del llm
    gc.collect()
    assert weight() is None
