"""The 8-bit KV cache (--kv-cache-dtype int8 | fp8_e4m3) on the cpu backend: the row
format's round trip, the native decode kernel and the SDPA paths against the reference
over the dequantized cache, bytes per block, and greedy decoding that stays with the
full-precision cache (teacher-forced top-1 agreement)."""

from __future__ import annotations

import pytest
import torch

from quire import LLM, SamplingParams
from quire.backends.cpu import native
from quire.backends.cpu.attention import CpuAttention
from quire.backends.torch import kv_quant
from quire.backends.torch.attention import AttentionMetadata
from quire.core.executor import ModelInfo
from quire.core.sizing import kv_cache_bytes_per_block
from quire.testing.reference import paged_attention
from tests.torch.test_cpu_attention import make_case

KINDS = ["int8", "fp8_e4m3"]


@pytest.mark.parametrize("kind", KINDS)
def test_rows_round_trip_within_the_format_step(kind):
    x = torch.randn(50, 3, 64) * torch.logspace(-3, 2, 50)[:, None, None]  # wide ranges
    values, scales = kv_quant.quantize(x, kind)
    rows = torch.cat([values.view(torch.uint8), scales.unsqueeze(-1).view(torch.uint8)], -1)
    back = kv_quant.dequantize(rows, kind, torch.float32)
    amax = x.abs().amax(-1, keepdim=True)
    if kind == "int8":  # half a step of amax / 127
        assert ((back - x).abs() <= amax / 254 * 1.001).all()
    else:  # e4m3: 3 mantissa bits, relative error <= 2^-4 for normal values
        assert ((back - x).abs() <= x.abs() / 16 + amax / 448 * 2**-6).all()
    zero = kv_quant.quantize(torch.zeros(2, 1, 8), kind)[0]
    assert not zero.float().any()  # all-zero rows stay zero (scale 1, not 0/0)


def _quantized_case(case, kind):
    """The case's caches as 8-bit rows, and the dequantized caches (the reference's)."""
    q, kc, vc, bt, qsl, sl = case
    caches = []
    for c in (kc, vc):
        rows = torch.zeros(*c.shape[:-1], kv_quant.row_bytes(c.shape[-1]), dtype=torch.uint8)
        kv_quant.write(rows, torch.arange(c.shape[0] * c.shape[1]),
                       c.reshape(-1, *c.shape[2:]), kind)
        caches.append(rows)
    deq = [kv_quant.dequantize(c, kind, torch.float32) for c in caches]
    return caches, deq


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("window,cap", [(None, None), (5, None), (None, 3.0)])
def test_native_decode_reads_8bit_rows(kind, dtype, window, cap):
    assert native.available()
    case = make_case([9, 1, 40, 16], [1, 1, 1, 1], 8, 2, 64, 8, dtype)
    (kq, vq), (kd, vd) = _quantized_case(case, kind)
    q, _, _, bt, qsl, sl = case
    got = native.paged_decode(q, kq, vq, bt, sl, 0.125, window, cap, kind)
    ref = paged_attention(q.float(), kd, vd, bt, qsl, sl, 0.125, window, cap)
    tol = 1e-5 if dtype == torch.float32 else 2e-2
    torch.testing.assert_close(got.float(), ref, atol=tol, rtol=tol)


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_cpu_attention_prefill_chunk_and_decode(kind, dtype):
    """CpuAttention with kv_quant: write_kv quantizes, prefill and chunk rows go through
    SDPA over dequantized pages, decode rows through the native kernel."""
    impl_cls = type("Q", (CpuAttention,), {"kv_quant": kind})
    impl = impl_cls(8, 2, 32, 32**-0.5)
    case = make_case([12, 6, 30], [4, 1, 30], 8, 2, 32, 8, dtype)
    q, kc, vc, bt, qsl, sl = case
    cache = torch.zeros(2, *kc.shape[:-1], kv_quant.row_bytes(32), dtype=torch.uint8)
    slots = torch.arange(kc.shape[0] * kc.shape[1])
    impl.write_kv(kc.reshape(-1, 2, 32), vc.reshape(-1, 2, 32), cache, slots)
    kd = kv_quant.dequantize(cache[0], kind, torch.float32)
    vd = kv_quant.dequantize(cache[1], kind, torch.float32)
    md = AttentionMetadata.from_canonical(qsl, sl, bt)
    got = impl.forward(q, cache, md)
    ref = paged_attention(q.float(), kd, vd, bt, qsl, sl, 32**-0.5)
    tol = 1e-5 if dtype == torch.float32 else 3e-2
    torch.testing.assert_close(got.float(), ref, atol=tol, rtol=tol)


def test_bytes_per_block_about_halve_bf16():
    for head in (64, 128):
        info = ModelInfo(vocab_size=10, max_model_len=8, num_layers=2, num_kv_heads=4,
                         head_size=head, dtype="bfloat16", architecture="x")
        ratio = kv_cache_bytes_per_block(info, 16) / kv_cache_bytes_per_block(info, 16, "int8")
        assert ratio == pytest.approx(2 * head / (head + 4))  # 1.88x at 64, 1.94x at 128


def _teacher_forced_agreement(model_dir: str, kind: str, steps: int = 96) -> float:
    """Greedy tokens of the full-precision cache, then, at every step of that sequence
    (prefix fed as the prompt), whether the 8-bit cache picks the same next token."""
    params = SamplingParams(temperature=0, max_tokens=steps, ignore_eos=True)
    prompt = [5, 9, 14, 3, 22, 7, 7, 30]
    ref = LLM(model_dir, dtype="float32", num_blocks=128)
    tokens = ref.generate([{"prompt_token_ids": prompt}], params,
                          use_tqdm=False)[0].outputs[0].token_ids
    q = LLM(model_dir, dtype="float32", num_blocks=128, kv_cache_dtype=kind)
    one = SamplingParams(temperature=0, max_tokens=1, ignore_eos=True)
    outs = q.generate([{"prompt_token_ids": prompt + tokens[:i]} for i in range(steps)], one,
                      use_tqdm=False)
    return sum(o.outputs[0].token_ids[0] == t for o, t in zip(outs, tokens)) / steps


@pytest.mark.parametrize("kind,floor", [("int8", 0.97), ("fp8_e4m3", 0.85)])
def test_greedy_stays_with_the_full_precision_cache(model_factory, kind, floor):
    model_dir = model_factory("llama", hidden_size=128, num_heads=4, num_kv_heads=2)
    assert _teacher_forced_agreement(model_dir, kind) >= floor


def test_kv_cache_dtype_is_checked():
    with pytest.raises(ValueError, match="kv_cache_dtype must be"):
        LLM("unused", kv_cache_dtype="int4")
    from quire.core.config import EngineConfig

    assert EngineConfig(kv_cache_dtype="fp8").kv_cache_dtype == "fp8_e4m3"  # vLLM's alias


def test_tpu_backend_refuses_an_8bit_cache(model_factory):
    with pytest.raises(ValueError, match="kv_cache_dtype 'int8' is not supported by the 'tpu'"):
        LLM(model_factory("llama"), backend="tpu", dtype="float32", num_blocks=16,
            kv_cache_dtype="int8")
