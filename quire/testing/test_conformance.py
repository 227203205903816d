"""The backend conformance kit: what every quire backend must pass.

1. its canonical paged_attention equals the reference over a grid of head sizes, block
   sizes, GQA ratios, ragged prefill / chunked prefill / decode mixes and dtypes;
2. its write_kv scatters K/V by slot_mapping, padding going to the null block;
3. end to end, its greedy tokens equal the cpu backend's on a small model.
"""

from __future__ import annotations

import importlib
from types import ModuleType

import numpy as np
import pytest
import torch

from quire.testing.reference import paged_attention as reference_attention
from quire.plugins.manager import BackendStatus, load_plugins
from quire.plugins.selection import load_factory

NEAR_TIE = 1e-3

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
def backend(backend_name: str) -> BackendStatus:
    table = {s.spec.name: s for s in load_plugins().backends()}
    if backend_name not in table:
        pytest.skip(f"backend {backend_name!r} is not registered on this machine")
    status = table[backend_name]
    if not status.availability:
        pytest.skip(f"backend {backend_name!r} unavailable: {status.availability.reason}")
    return status


@pytest.fixture(scope="module")
def ops(backend: BackendStatus) -> ModuleType:
    if backend.spec.ops is None:
        pytest.fail(f"backend {backend.spec.name!r} declares no ops module (BackendSpec.ops)")
    return importlib.import_module(backend.spec.ops)


def _case(seq_lens, query_lens, hq, hkv, d, bs, dtype, seed=0):
    g = torch.Generator().manual_seed(seed)
    max_blocks = max(-(-s // bs) for s in seq_lens)
    num_blocks = 1 + len(seq_lens) * max_blocks
    tables = (torch.randperm(num_blocks - 1, generator=g) + 1).view(len(seq_lens), -1).int()
    kc = torch.randn(num_blocks, bs, hkv, d, generator=g).to(dtype)
    vc = torch.randn(num_blocks, bs, hkv, d, generator=g).to(dtype)
    q = torch.randn(sum(query_lens), hq, d, generator=g).to(dtype)
    qsl = torch.tensor(np.concatenate([[0], np.cumsum(query_lens)]), dtype=torch.int32)
    return q, kc, vc, tables, qsl, torch.tensor(seq_lens, dtype=torch.int32)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("window,soft_cap", [(None, None), (8, None), (None, 30.0)])
@pytest.mark.parametrize("seq_lens,query_lens,hq,hkv,d,bs", GRID)
def test_paged_attention(ops, seq_lens, query_lens, hq, hkv, d, bs, window, soft_cap, dtype):
    case = _case(seq_lens, query_lens, hq, hkv, d, bs, dtype)
    try:
        got = ops.paged_attention(*case, scale=d**-0.5, sliding_window=window, soft_cap=soft_cap)
    except NotImplementedError as exc:
        pytest.skip(f"not implemented by this backend: {exc}")
    want = reference_attention(*case, scale=d**-0.5, sliding_window=window, soft_cap=soft_cap)
    tol = 2e-5 if dtype == torch.float32 else 3e-2
    torch.testing.assert_close(_as_float_tensor(got), want.float(), atol=tol, rtol=tol)


def _as_float_tensor(x) -> torch.Tensor:
    """A backend's output (a torch tensor, or any array numpy can read) as fp32 torch."""
    if isinstance(x, torch.Tensor):
        return x.float().cpu()
    return torch.from_numpy(np.array(x, dtype=np.float32))


@pytest.mark.parametrize("hkv,d,bs", [(1, 64, 16), (4, 128, 32)])
def test_write_kv_with_padding(ops, hkv, d, bs):
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


def test_greedy_matches_cpu(backend, tmp_path_factory):
    from quire import LLM, SamplingParams
    from quire.testing.tiny_models import build_model

    model_dir = build_model(str(tmp_path_factory.mktemp("conformance-model")), "llama")
    dtype = "float32" if "float32" in load_factory(backend).capabilities().dtypes else "auto"
    prompts = ["Hello world", "the scheduler serves paged attention blocks", "a", "one two"]
    params = SamplingParams(temperature=0, max_tokens=16, ignore_eos=True, logprobs=2)
    cpu = LLM(model_dir, backend="cpu", dtype=dtype, block_size=16, num_blocks=64)
    ref = cpu.generate(prompts, params, use_tqdm=False)
    ours = LLM(model_dir, backend=backend.spec.name, dtype=dtype, block_size=16, num_blocks=64)
    got = ours.generate(prompts, params, use_tqdm=False)
    for r, g in zip(ref, got):
        ref_ids, got_ids = r.outputs[0].token_ids, g.outputs[0].token_ids
        n = len(ref_ids)
        for i, entry in enumerate(r.outputs[0].logprobs):
            top = sorted((lp.logprob for lp in entry.values()), reverse=True)
            if len(top) > 1 and top[0] - top[1] < NEAR_TIE:
                n = i
                break
        assert got_ids[:n] == ref_ids[:n], (g.prompt, got_ids, ref_ids)
