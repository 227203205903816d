"""The conformance kit's KV-cache cases (cases 6 and 7 of test_conformance.py's list): the
8-bit caches and the hybrid cache a backend declares, each end to end against the cpu
backend with the same cache. Run with the rest of the kit:

    pytest --pyargs quire.testing --quire-backend NAME
"""

from __future__ import annotations

import pytest

from quire.core.sizing import cdiv

# The kit's fixtures, imported so that pytest finds them in this module too.
from quire.testing.test_conformance import (  # noqa: F401
    NEAR_TIE,
    _assert_greedy_equal,
    _generate,
    backend,
    caps,
    model_dir,
)

# -- 8-bit KV cache ------------------------------------------------------------------------
_KV_REFERENCE: dict[str, list] = {}


@pytest.mark.parametrize("kind", ["int8", "fp8_e4m3"])
def test_quantized_kv_cache_matches_cpu(backend, caps, model_dir, kind):  # noqa: F811
    """--kv-cache-dtype int8 / fp8_e4m3, where the backend declares it: the cpu backend with
    the same cache is the reference (its kernels are checked against attention over the
    dequantized cache), so the backend must store what the layout says (one byte per value,
    a float32 scale per token and KV head) and read it back the same way."""
    from quire.core.sizing import kv_cache_bytes_per_block

    if kind not in caps.kv_cache_dtypes:
        pytest.skip(f"kv_cache_dtype {kind} not declared "
                    f"(kv_cache_dtypes={caps.kv_cache_dtypes})")
    dtype = "float32" if "float32" in caps.dtypes else caps.default_dtype
    if kind not in _KV_REFERENCE:
        _KV_REFERENCE[kind] = _generate(model_dir, "cpu", dtype, 16, kv_cache_dtype=kind)[0]
    facts: dict = {}
    first, again = _generate(model_dir, backend.spec.name, dtype, caps.default_block_size,
                             kv_cache_dtype=kind, facts=facts)
    near_tie = NEAR_TIE.get(dtype, NEAR_TIE["bfloat16"])
    _assert_greedy_equal(_KV_REFERENCE[kind], first, near_tie)
    _assert_greedy_equal(first[:2], again, 0.0)
    bf16 = kv_cache_bytes_per_block(facts["info"], caps.default_block_size)
    if facts["info"].dtype != "bfloat16":
        bf16 = bf16 * 2 // {"float32": 4, "float16": 2}[facts["info"].dtype]
    assert facts["bytes_per_block"] * 3 <= bf16 * 2, (facts["bytes_per_block"], bf16)


# -- hybrid KV cache -----------------------------------------------------------------------
def test_hybrid_kv_cache_matches_cpu(backend, caps, tmp_path_factory):  # noqa: F811
    """Capabilities.hybrid_kv_cache: a Gemma 3 model (a sliding-window layer and a global
    one) with the windowed layer in its own, smaller cache: greedy tokens equal the cpu
    backend's (which equals HF transformers), every layer reading its group's tables."""
    from quire import LLM, SamplingParams
    from quire.testing.tiny_models import build_model

    if not caps.hybrid_kv_cache:
        pytest.skip("hybrid_kv_cache not declared: mixed-window models keep one table")
    dtype = "float32" if "float32" in caps.dtypes else caps.default_dtype
    model = build_model(str(tmp_path_factory.mktemp("hybrid-model")), "gemma3",
                        sliding_window=16)
    prompts = [list(range(3, 60)), list(range(3, 40)) + [7, 8, 9], [5]]
    params = SamplingParams(temperature=0, max_tokens=40, ignore_eos=True, logprobs=2)

    def run(name: str, block_size: int) -> list:
        num_blocks = 1 + 2 * cdiv(100, block_size)
        llm = LLM(model, backend=name, dtype=dtype, block_size=block_size,
                  num_blocks=num_blocks, max_num_seqs=2, max_num_batched_tokens=32)
        kv = llm.engine.kv_cache
        assert [g.window for g in kv.groups] == [None, 16]
        # Pages of one layer's block: twice the blocks, and one sequence may grow past
        # what the whole-model blocks would hold.
        assert kv.pool.num_usable_blocks == 2 * num_blocks - 1
        assert llm.engine.max_model_len > (num_blocks - 1) * block_size
        outs = llm.generate([{"prompt_token_ids": p} for p in prompts], params,
                            use_tqdm=False)
        assert llm.engine.stats().num_used_blocks == 0
        llm.engine.shutdown()
        return outs

    _assert_greedy_equal(run("cpu", 16), run(backend.spec.name, caps.default_block_size),
                         NEAR_TIE.get(dtype, NEAR_TIE["bfloat16"]))
