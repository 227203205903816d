"""The backend conformance kit: what every quire backend must pass.

    pytest --pyargs quire.testing --quire-backend NAME

1. its canonical paged_attention (BackendSpec.ops) equals quire.testing.reference over a grid
   of head sizes, block sizes, GQA ratios, ragged prefill / chunked prefill / decode mixes,
   windows, soft-caps and dtypes — each case the backend's Capabilities declare; the rest
   are skipped with the reason;
2. its write_kv scatters K/V by slot_mapping, padding going to the null block;
3. end to end, its greedy tokens equal the cpu backend's on a small model, for each
   declared block size, with chunked prefill and prefix-cache hits, in fp32 and bf16;
4. its sampler applies structured-output token bitmasks (JSON schema, regex, choice,
   grammar): a random-weight model's outputs satisfy their constraints;
5. speculative decoding: steps whose requests carry draft tokens as extra query positions
   (several query tokens after a cached context, a logits row per position) give the same
   greedy tokens as the cpu backend without speculation (n-gram and draft-model
   proposers), and seeded sampling gives the same tokens as the backend itself without
   speculation;
6. 8-bit KV caches it declares (Capabilities.kv_cache_dtypes: "int8", "fp8_e4m3"): greedy
   tokens equal the cpu backend's with the same cache, with chunked prefill and prefix
   hits, in at most two thirds of the bf16 cache's bytes per block;
7. a hybrid KV cache, where declared (Capabilities.hybrid_kv_cache): a model mixing
   sliding-window and global layers, each group in its own cache, equals the cpu backend.
   (Cases 6 and 7 live in test_conformance_kv_cache.py.)

A backend that is not registered, not available, or whose plugin or executor fails to
load is a failure with the reason, never a silent pass (--quire-skip-unavailable turns that
into a skip, for a CI that runs the kit over backends this machine lacks).
"""

from __future__ import annotations

import importlib
from types import ModuleType

import numpy as np
import pytest
import torch

from quire.core.executor import Capabilities
from quire.core.sizing import cdiv
from quire.plugins.manager import BackendStatus, load_plugins
from quire.plugins.selection import describe, load_factory
from quire.testing.compare import greedy_agreement
from quire.testing.reference import paged_attention as reference_attention

# A step whose reference top-2 logprobs are closer than this may go either way. bf16 logits
# carry ~1/16 resolution and kernels differ in accumulation order: a wider margin.
NEAR_TIE = {"float32": 1e-3, "bfloat16": 0.3}
BLOCK_SIZES = (1, 2, 4, 8, 16, 32, 64, 128)
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}

GRID = [
    # seq_lens, query_lens, Hq, Hkv, D, block_size
    ([9], [9], 4, 4, 64, 16),  # prefill, MHA
    ([40, 1, 17], [1, 1, 1], 8, 2, 64, 16),  # decode, GQA 4
    ([50, 20, 7], [10, 1, 7], 8, 1, 128, 32),  # chunked prefill + decode + prefill, MQA
    ([70, 33], [1, 33], 4, 2, 80, 64),  # head size 80
    ([23, 5], [3, 5], 2, 2, 96, 16),
    ([130], [1], 2, 1, 256, 32),  # head size 256, long decode
]


@pytest.fixture(scope="module")
def backend(backend_name: str, request: pytest.FixtureRequest) -> BackendStatus:
    plugins = load_plugins()
    table = {s.spec.name: s for s in plugins.backends()}
    problem = None
    if backend_name not in table:
        problem = f"backend {backend_name!r} is not registered.\n{describe(plugins)}"
    elif not table[backend_name].availability:
        problem = (f"backend {backend_name!r} is unavailable: "
                   f"{table[backend_name].availability.reason}")
    if problem is not None:
        if request.config.getoption("--quire-skip-unavailable"):
            pytest.skip(problem)
        pytest.fail(problem, pytrace=False)
    return table[backend_name]


@pytest.fixture(scope="module")
def caps(backend: BackendStatus) -> Capabilities:
    try:
        return load_factory(backend).capabilities()
    except ValueError as exc:
        pytest.fail(str(exc), pytrace=False)


@pytest.fixture(scope="module")
def ops(backend: BackendStatus) -> ModuleType:
    if backend.spec.ops is None:
        pytest.fail(f"backend {backend.spec.name!r} declares no ops module (BackendSpec.ops)",
                    pytrace=False)
    try:
        return importlib.import_module(backend.spec.ops)
    except Exception as exc:
        pytest.fail(f"ops module {backend.spec.ops!r} of backend {backend.spec.name!r} failed "
                    f"to import: {type(exc).__name__}: {exc}", pytrace=False)


def _require(caps: Capabilities, *, block_size: int | None = None, head_size: int | None = None,
             dtype: str | None = None) -> None:
    """Skip, saying why, what the backend does not declare."""
    if block_size is not None and block_size not in caps.block_sizes:
        pytest.skip(f"block size {block_size} not declared (block_sizes={caps.block_sizes})")
    if head_size is not None and caps.head_sizes is not None and \
            head_size not in caps.head_sizes:
        pytest.skip(f"head size {head_size} not declared (head_sizes={caps.head_sizes})")
    if dtype is not None and dtype not in caps.dtypes:
        pytest.skip(f"dtype {dtype} not declared (dtypes={caps.dtypes})")


def _case(seq_lens, query_lens, hq, hkv, d, bs, dtype, seed=0):
    g = torch.Generator().manual_seed(seed)
    max_blocks = max(cdiv(s, bs) for s in seq_lens)
    num_blocks = 1 + len(seq_lens) * max_blocks
    tables = (torch.randperm(num_blocks - 1, generator=g) + 1).view(len(seq_lens), -1).int()
    kc = torch.randn(num_blocks, bs, hkv, d, generator=g).to(dtype)
    vc = torch.randn(num_blocks, bs, hkv, d, generator=g).to(dtype)
    q = torch.randn(sum(query_lens), hq, d, generator=g).to(dtype)
    qsl = torch.tensor(np.concatenate([[0], np.cumsum(query_lens)]), dtype=torch.int32)
    return q, kc, vc, tables, qsl, torch.tensor(seq_lens, dtype=torch.int32)


def _check_attention(ops, case, d, window, soft_cap, dtype):
    try:
        got = ops.paged_attention(*case, scale=d**-0.5, sliding_window=window, soft_cap=soft_cap)
    except NotImplementedError as exc:
        pytest.skip(f"not implemented by this backend: {exc}")
    want = reference_attention(*case, scale=d**-0.5, sliding_window=window, soft_cap=soft_cap)
    tol = 2e-5 if dtype == torch.float32 else 3e-2
    torch.testing.assert_close(_as_float_tensor(got), want.float(), atol=tol, rtol=tol)


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
@pytest.mark.parametrize("window,soft_cap", [(None, None), (8, None), (None, 30.0)])
@pytest.mark.parametrize("seq_lens,query_lens,hq,hkv,d,bs", GRID)
def test_paged_attention(ops, caps, seq_lens, query_lens, hq, hkv, d, bs, window, soft_cap,
                         dtype):
    _require(caps, block_size=bs, head_size=d, dtype=dtype)
    case = _case(seq_lens, query_lens, hq, hkv, d, bs, DTYPES[dtype])
    _check_attention(ops, case, d, window, soft_cap, DTYPES[dtype])


@pytest.mark.parametrize("bs", BLOCK_SIZES)
def test_paged_attention_each_block_size(ops, caps, bs):
    """A prefill, a chunk and a decode over several blocks, at every declared block size."""
    d = 64 if caps.head_sizes is None or 64 in caps.head_sizes else caps.head_sizes[0]
    _require(caps, block_size=bs, head_size=d)
    dtype = "float32" if "float32" in caps.dtypes else caps.dtypes[0]
    case = _case([19, 37, 5], [19, 6, 1], 4, 2, d, bs, DTYPES.get(dtype, torch.float32))
    _check_attention(ops, case, d, None, None, DTYPES.get(dtype, torch.float32))


def _as_float_tensor(x) -> torch.Tensor:
    """A backend's output (a torch tensor, or any array numpy can read) as fp32 torch."""
    if isinstance(x, torch.Tensor):
        return x.float().cpu()
    return torch.from_numpy(np.array(x, dtype=np.float32))


@pytest.mark.parametrize("hkv,d,bs", [(1, 64, 16), (4, 128, 32), (2, 64, 4)])
def test_write_kv_with_padding(ops, caps, hkv, d, bs):
    _require(caps, block_size=bs, head_size=d)
    num_blocks = 4
    kc = torch.zeros(num_blocks, bs, hkv, d)
    vc = torch.zeros(num_blocks, bs, hkv, d)
    slots = torch.tensor([bs + 3, 3 * bs, 2 * bs + bs - 1, 0, 0])  # two padded tokens
    key = torch.randn(5, hkv, d)
    value = torch.randn(5, hkv, d)
    ops.write_kv(key, value, kc, vc, slots)
    for t, slot in enumerate(slots[:3].tolist()):
        torch.testing.assert_close(kc[slot // bs, slot % bs], key[t])
        torch.testing.assert_close(vc[slot // bs, slot % bs], value[t])
    written = {s // bs * 10_000 + s % bs for s in slots[:3].tolist()}
    for b in range(1, num_blocks):  # nothing else outside the null block changed
        for o in range(bs):
            if b * 10_000 + o not in written:
                assert not kc[b, o].any() and not vc[b, o].any()


# -- end to end ----------------------------------------------------------------------------
PROMPTS = [
    list(range(3, 60)),  # longer than the chunk budget below: chunked prefill
    list(range(3, 40)) + [7, 8, 9],  # shares whole blocks with the first: prefix-cache hits
    [5],
    [11, 12, 13, 14],
]


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> str:
    from quire.testing.tiny_models import build_model

    return build_model(str(tmp_path_factory.mktemp("conformance-model")), "llama")


def _generate(model_dir: str, backend: str, dtype: str, block_size: int,
              tensor_parallel_size: int = 1, kv_cache_dtype: str = "auto",
              facts: dict | None = None):
    """(first, again) outputs; facts, when given, gets the engine's bytes_per_block."""
    from quire import LLM, SamplingParams

    llm = LLM(model_dir, backend=backend, dtype=dtype, block_size=block_size,
              num_blocks=1 + 4 * cdiv(128, block_size), max_model_len=128,
              max_num_batched_tokens=32, tensor_parallel_size=tensor_parallel_size,
              kv_cache_dtype=kv_cache_dtype)
    if facts is not None:
        facts["bytes_per_block"] = llm.engine.executor.kv_cache_bytes_per_block(block_size)
        facts["info"] = llm.engine.model_info
    params = SamplingParams(temperature=0, max_tokens=12, ignore_eos=True, logprobs=2)
    first = llm.generate([{"prompt_token_ids": p} for p in PROMPTS], params, use_tqdm=False)
    again = llm.generate([{"prompt_token_ids": p} for p in PROMPTS[:2]], params,
                         use_tqdm=False)
    llm.engine.shutdown()
    return first, again


_REFERENCE: dict[str, list] = {}


def _reference(model_dir: str, dtype: str) -> list:
    if dtype not in _REFERENCE:
        _REFERENCE[dtype] = _generate(model_dir, "cpu", dtype, 16)[0]
    return _REFERENCE[dtype]


def _assert_greedy_equal(ref, got, near_tie: float) -> None:
    agreement = greedy_agreement(ref, got, near_tie)
    assert not agreement.mismatches, agreement.mismatches
    assert agreement.num_compared > 0, \
        "every prompt's first step was a near-tie: nothing was compared"


@pytest.mark.parametrize("block_size", BLOCK_SIZES)
def test_greedy_matches_cpu(backend, caps, model_dir, block_size):
    _require(caps, block_size=block_size)
    dtype = "float32" if "float32" in caps.dtypes else caps.default_dtype
    first, again = _generate(model_dir, backend.spec.name, dtype, block_size)
    near_tie = NEAR_TIE.get(dtype, NEAR_TIE["bfloat16"])
    _assert_greedy_equal(_reference(model_dir, dtype), first, near_tie)
    _assert_greedy_equal(first[:2], again, 0.0)  # cache hits change nothing
    shared = (37 // block_size) * block_size  # whole blocks the two prompts share
    assert again[1].num_cached_tokens >= shared, "shared blocks were not served from the cache"


def test_greedy_matches_cpu_bfloat16(backend, caps, model_dir):
    _require(caps, dtype="bfloat16")
    block_size = caps.default_block_size
    first, _ = _generate(model_dir, backend.spec.name, "bfloat16", block_size)
    _assert_greedy_equal(_reference(model_dir, "bfloat16"), first, NEAR_TIE["bfloat16"])


# -- tensor parallelism --------------------------------------------------------------------
def test_tensor_parallel_matches_one_device(backend, caps, model_dir):
    """Two ranks through the backend's Executor.tensor_parallel (torch-family backends
    inherit a multi-process one whose ranks meet through the communicator the executor
    names, TorchExecutor.tp_communicator) give the greedy tokens of one device, with
    chunked prefill and prefix-cache hits. A backend whose executor keeps the default
    refusal does not run tensor parallelism and is skipped saying so."""
    dtype = "float32" if "float32" in caps.dtypes else caps.default_dtype
    try:
        first, again = _generate(model_dir, backend.spec.name, dtype,
                                 caps.default_block_size, tensor_parallel_size=2)
    except ValueError as exc:
        if "does not run tensor parallelism" in str(exc) or "JAX devices" in str(exc):
            pytest.skip(f"{backend.spec.name}: {exc}")
        raise
    near_tie = NEAR_TIE.get(dtype, NEAR_TIE["bfloat16"])
    _assert_greedy_equal(_reference(model_dir, dtype), first, near_tie)
    _assert_greedy_equal(first[:2], again, 0.0)


# -- structured outputs --------------------------------------------------------------------
@pytest.mark.parametrize("name", ["json-matrix", "regex-date", "choice", "grammar"])
def test_structured_outputs_hold(backend, caps, model_dir, name):
    """The backend's sampler applies the token bitmask: a random-weight model's outputs
    satisfy their constraint, greedy and sampled."""
    from quire import SamplingParams
    from quire.testing.structured_cases import CASES

    spec, check = CASES[name]
    dtype = "float32" if "float32" in caps.dtypes else caps.default_dtype
    llm = _structured_llm(model_dir, backend.spec.name, dtype, caps.default_block_size)
    params = [SamplingParams(temperature=t, seed=7, max_tokens=200, structured_outputs=spec)
              for t in (0.0, 1.0)]
    for out in llm.generate(["hello", "x y"], params, use_tqdm=False):
        c = out.outputs[0]
        assert c.finish_reason == "stop", (c.text, c.finish_reason, out.error)
        check(c.text)


_LLMS: dict[tuple, object] = {}


def _structured_llm(model_dir: str, backend: str, dtype: str, block_size: int):
    key = (model_dir, backend)
    if key not in _LLMS:
        from quire import LLM

        _LLMS[key] = LLM(model_dir, backend=backend, dtype=dtype, block_size=block_size,
                         num_blocks=1 + 8 * cdiv(256, block_size), max_model_len=256)
    return _LLMS[key]


# -- speculative decoding ------------------------------------------------------------------
SPEC_PROMPTS = [
    [5, 6, 7, 8] * 6,  # prompt lookup finds matches at once
    list(range(3, 30)) + list(range(3, 12)),
    [9, 10, 9, 10, 9],
]


def _spec_generate(model_dir: str, backend: str, dtype: str, block_size: int,
                   speculative: bool | str, params):
    from quire import LLM

    spec = None
    if speculative == "draft_model":  # the model drafting for itself
        spec = {"method": "draft_model", "model": model_dir, "num_speculative_tokens": 3,
                "adaptive": False}
    elif speculative:
        spec = {"method": "ngram", "num_speculative_tokens": 3, "prompt_lookup_max": 3,
                "adaptive": False}
    llm = LLM(model_dir, backend=backend, dtype=dtype, block_size=block_size,
              num_blocks=1 + 4 * cdiv(128, block_size), max_model_len=128,
              max_num_batched_tokens=32, speculative_config=spec)
    outs = llm.generate([{"prompt_token_ids": p} for p in SPEC_PROMPTS], params,
                        use_tqdm=False)
    stats = llm.engine.stats().spec_decode
    llm.engine.shutdown()
    return outs, stats


def test_speculative_decoding_matches_plain(backend, caps, model_dir):
    from quire import SamplingParams

    dtype = "float32" if "float32" in caps.dtypes else caps.default_dtype
    bs = caps.default_block_size
    greedy = SamplingParams(temperature=0, max_tokens=16, ignore_eos=True, logprobs=2)
    ref, _ = _spec_generate(model_dir, "cpu", dtype, 16, False, greedy)
    got, stats = _spec_generate(model_dir, backend.spec.name, dtype, bs, True, greedy)
    assert stats.num_drafts > 0 and stats.num_accepted_tokens > 0, stats
    _assert_greedy_equal(ref, got, NEAR_TIE.get(dtype, NEAR_TIE["bfloat16"]))
    seeded = [SamplingParams(temperature=0.8, seed=s, max_tokens=12, ignore_eos=True)
              for s in range(len(SPEC_PROMPTS))]
    plain, _ = _spec_generate(model_dir, backend.spec.name, dtype, bs, False, seeded)
    spec, _ = _spec_generate(model_dir, backend.spec.name, dtype, bs, True, seeded)
    assert [o.outputs[0].token_ids for o in spec] == [o.outputs[0].token_ids for o in plain]
    # A draft model on the backend (the model itself: its greedy drafts are the target's
    # greedy tokens, so nearly all are accepted when its own cache is kept right).
    got, stats = _spec_generate(model_dir, backend.spec.name, dtype, bs, "draft_model",
                                greedy)
    _assert_greedy_equal(ref, got, NEAR_TIE.get(dtype, NEAR_TIE["bfloat16"]))
    assert stats.num_accepted_tokens >= 0.9 * stats.num_draft_tokens > 0, stats
