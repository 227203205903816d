"""The Triton attention kernels over an 8-bit KV cache (int8, fp8 e4m3 decoded from its
bits), unified and split-KV paths, against the reference over the dequantized cache; and
a model end to end on triton-interpret with --kv-cache-dtype, against the cpu backend's
8-bit cache."""

from __future__ import annotations

import pytest
import torch

from quire.backends.torch import kv_quant
from quire.backends.triton.attention import paged_attention
from quire.testing.reference import paged_attention as reference
from tests.triton.test_kernels import TOL, make_case


def _quantize_caches(case, kind):
    q, kc, vc, bt, qsl, sl = case
    out = []
    for c in (kc, vc):
        rows = torch.zeros(*c.shape[:-1], kv_quant.row_bytes(c.shape[-1]), dtype=torch.uint8,
                           device=c.device)
        kv_quant.write(rows, torch.arange(c.shape[0] * c.shape[1], device=c.device),
                       c.reshape(-1, *c.shape[2:]), kind)
        out.append(rows)
    deq = [kv_quant.dequantize(r, kind, torch.float32).cpu() for r in out]
    return out, deq


@pytest.mark.parametrize("kind", ["int8", "fp8_e4m3"])
@pytest.mark.parametrize("seq_lens,query_lens,hq,hkv,d,bs,dtype,window,splits", [
    ([17], [17], 4, 4, 64, 16, torch.float32, None, 1),  # prefill
    ([50, 20, 7], [10, 1, 7], 8, 2, 80, 32, torch.float16, None, 1),  # mixed, fp16
    ([70, 33], [1, 33], 12, 4, 96, 16, torch.bfloat16, 16, 1),  # window, bf16
    ([300, 1, 77], [1, 1, 1], 8, 2, 64, 16, torch.float32, None, 4),  # split-KV decode
])
def test_kernels_read_8bit_rows(device, kind, seq_lens, query_lens, hq, hkv, d, bs, dtype,
                                window, splits):
    case = make_case(seq_lens, query_lens, hq, hkv, d, bs, dtype, device)
    (kq, vq), (kd, vd) = _quantize_caches(case, kind)
    q, _, _, bt, qsl, sl = case
    got = paged_attention(q, kq, vq, bt, qsl, sl, scale=d**-0.5, sliding_window=window,
                          num_splits=splits, kv_quant=kind)
    want = reference(q.float().cpu(), kd, vd, bt.cpu(), qsl.cpu(), sl.cpu(), scale=d**-0.5,
                     sliding_window=window)
    torch.testing.assert_close(got.float().cpu(), want, atol=TOL[dtype], rtol=TOL[dtype])


def test_e4m3_bits_decode_like_torch(device):
    """Every finite e4m3 byte, decoded in the kernel (scale 1), equals torch's float8."""
    codes = torch.tensor([b for b in range(256) if b & 0x7F != 0x7F], dtype=torch.uint8)
    values = codes.view(torch.float8_e4m3fn).float()
    n = codes.numel()  # rows of one head of 8 values each
    rows = torch.zeros(n, 1, 1, 12, dtype=torch.uint8)
    rows[:, 0, 0, :8] = codes[:, None]
    rows[:, 0, 0, 8:] = torch.ones(n, 1).view(torch.uint8)
    # one key per block, a query of ones: with one visible key the output is its value row
    q = torch.ones(n, 1, 8)
    bt = torch.arange(n, dtype=torch.int32)[:, None]
    qsl = torch.arange(n + 1, dtype=torch.int32)
    sl = torch.ones(n, dtype=torch.int32)
    got = paged_attention(*(t.to(device) for t in (q, rows, rows, bt, qsl, sl)), scale=1.0,
                          num_splits=1, kv_quant="fp8_e4m3")
    torch.testing.assert_close(got[:, 0, 0].cpu(), values, atol=0, rtol=0)


@pytest.mark.parametrize("kind", ["int8", "fp8_e4m3"])
def test_triton_interpret_8bit_cache_matches_cpu(model_factory, kind):
    if torch.cuda.is_available():
        pytest.skip("a GPU is present: the kernel tests above run the real path")
    from quire import LLM, SamplingParams

    model_dir = model_factory("llama")
    params = SamplingParams(temperature=0, max_tokens=8, ignore_eos=True)
    prompts = ["one two three four", "hello"]
    outs = []
    for backend in ("cpu", "triton-interpret"):
        llm = LLM(model_dir, backend=backend, dtype="float32", block_size=16, num_blocks=24,
                  kv_cache_dtype=kind)
        assert llm.engine.executor.kv_caches[0].dtype == torch.uint8
        outs.append([o.outputs[0].token_ids
                     for o in llm.generate(prompts, params, use_tqdm=False)])
    assert outs[0] == outs[1]
