"""quire's Triton kernels for paged KV attention (shared by the cuda and rocm backends).

Dimensions: T tokens, Hq query heads, Hkv KV heads, G = Hq / Hkv (padded: GP), D head size
(padded to a power of two: DP), N blocks, S block size (page), R requests, B max blocks
per request, Q query block (queries per program), M = Q * GP rows per program, P splits.
Cache layout: key/value cache [N, S, Hkv, D] each (one layer), any strides.

- _write_kv_kernel: grid (T,). Token t's keys and values go to slot_mapping[t]; padded
  tokens carry slot 0 (the null block), so the kernel never branches on padding.
- _unified_attention_kernel: grid (T // Q + R, Hkv). One launch serves decode, prefill and
  chunked prefill with cached context. A program owns Q queries of one request times the G
  query heads of one KV head: an [M, DP] tile, so the dot products are well shaped for GQA
  and decode alike. It finds its request by binary search over query_start_loc (no host
  planning, so CUDA graphs can capture it), walks the request's keys in tiles of TILE
  positions (a tile gathers its keys' pages from the block table, so tile width is free of
  the page size) with an online softmax in fp32, skipping tiles outside the causal /
  sliding window.
- _split_kv_decode_kernel + _reduce_splits_kernel (flash-decoding): grid (R, Hkv, P) then
  (R, Hq). For decode (one query per request) with few requests and long contexts, the
  context is cut into P ranges whose partial results (output and log-sum-exp) are merged.

8-bit caches (KV_QUANT 1: int8, 2: fp8 e4m3): each (token, head) row is D one-byte values
then a float32 scale (backends/torch/kv_quant.py's layout; strides in bytes). A tile's keys
and values are dequantized after loading (k_scale_ptr / v_scale_ptr: the same bytes as
float32, the scale at byte offset row + D); e4m3 is decoded from its bits, so no target
needs native fp8 support.

Dots use input_precision="ieee": exact fp32 products for fp32 inputs (no TF32; gfx90a has
none), and no effect on fp16/bf16 inputs, which the tensor cores take natively.
UPCAST_DOT: Triton's CPU interpreter computes bf16 tl.dot wrongly (fp16 and fp32 are fine),
so under TRITON_INTERPRET=1 bf16 tiles are widened to fp32 before each dot.
"""

from __future__ import annotations

import triton
import triton.language as tl


@triton.jit
def _write_kv_kernel(key_ptr, value_ptr, k_cache_ptr, v_cache_ptr, slot_ptr,
                     stride_kt, stride_kh, stride_vt, stride_vh,
                     stride_cn, stride_cs, stride_ch,
                     NUM_KV_HEADS: tl.constexpr, HEADS_PAD: tl.constexpr, HEAD: tl.constexpr,
                     HEAD_PAD: tl.constexpr, BLOCK_SIZE: tl.constexpr):
    t = tl.program_id(0)
    slot = tl.load(slot_ptr + t).to(tl.int64)
    block, offset = slot // BLOCK_SIZE, slot % BLOCK_SIZE
    heads = tl.arange(0, HEADS_PAD)
    dims = tl.arange(0, HEAD_PAD)
    mask = (heads[:, None] < NUM_KV_HEADS) & (dims[None, :] < HEAD)
    src_k = key_ptr + t * stride_kt + heads[:, None] * stride_kh + dims[None, :]
    src_v = value_ptr + t * stride_vt + heads[:, None] * stride_vh + dims[None, :]
    dst = block * stride_cn + offset * stride_cs + heads[:, None] * stride_ch + dims[None, :]
    tl.store(k_cache_ptr + dst, tl.load(src_k, mask=mask), mask=mask)
    tl.store(v_cache_ptr + dst, tl.load(src_v, mask=mask), mask=mask)


@triton.jit
def _find_request(qsl_ptr, num_reqs, program, BLOCK_Q: tl.constexpr):
    """The last request whose first query block (query_start_loc[i] // Q + i, an upper
    bound on the blocks of the requests before it) is at or before this program."""
    lo = 0
    hi = num_reqs
    while lo < hi:
        mid = (lo + hi) // 2
        first = tl.load(qsl_ptr + mid) // BLOCK_Q + mid
        if first <= program:
            lo = mid + 1
        else:
            hi = mid
    return lo - 1


@triton.jit
def _soft_cap(s, cap):
    # cap * tanh(s / cap), with tanh(x) = 2 * sigmoid(2x) - 1
    return cap * (2.0 * tl.sigmoid(2.0 * s / cap) - 1.0)


@triton.jit
def _dequant_rows(x, scale_ptr, row, in_range, HEAD: tl.constexpr, KV_QUANT: tl.constexpr):
    """8-bit values x [TILE, DP] of the rows starting at byte offsets row [TILE] -> fp32."""
    s = tl.load(scale_ptr + (row + HEAD) // 4, mask=in_range, other=0.0)
    if KV_QUANT == 1:
        v = x.to(tl.float32)
    else:  # e4m3 from its bits: sign, 4 exponent bits (bias 7), 3 mantissa bits
        b = x.to(tl.int32) & 0xFF
        e = (b >> 3) & 0xF
        m = (b & 7).to(tl.float32)
        mag = tl.where(e == 0, m * 0.001953125, (m + 8.0) * tl.exp2((e - 10).to(tl.float32)))
        v = tl.where(b >= 128, -mag, mag)
    return v * s[:, None]


@triton.jit
def _attend_tiles(acc, m_i, l_i, q, q_pos, k_cache_ptr, v_cache_ptr, k_scale_ptr,
                  v_scale_ptr, table_ptr, first_tile, end_tile, end_pos, kv_head, scale,
                  soft_cap, stride_cn, stride_cs, stride_ch,
                  HEAD: tl.constexpr, HEAD_PAD: tl.constexpr, BLOCK_SIZE: tl.constexpr,
                  TILE: tl.constexpr, WINDOW: tl.constexpr, USE_SOFT_CAP: tl.constexpr,
                  UPCAST_DOT: tl.constexpr, KV_QUANT: tl.constexpr):
    """Online softmax of q [M, DP] (positions q_pos [M]) over key tiles [first, end) of
    TILE positions each (keys at positions >= end_pos are masked). A tile may span several
    pages: each key's page comes from the block table, so TILE is free of BLOCK_SIZE."""
    offs_n = tl.arange(0, TILE)
    dims = tl.arange(0, HEAD_PAD)
    d_ok = dims[None, :] < HEAD
    for tile in range(first_tile, end_tile):
        k_pos = tile * TILE + offs_n
        in_range = k_pos < end_pos
        block = tl.load(table_ptr + k_pos // BLOCK_SIZE, mask=in_range, other=0).to(tl.int64)
        row = block * stride_cn + (k_pos % BLOCK_SIZE) * stride_cs + kv_head * stride_ch
        kv_off = row[:, None] + dims[None, :]
        load_mask = in_range[:, None] & d_ok
        k = tl.load(k_cache_ptr + kv_off, mask=load_mask, other=0)
        v = tl.load(v_cache_ptr + kv_off, mask=load_mask, other=0)
        if KV_QUANT > 0:
            k = _dequant_rows(k, k_scale_ptr, row, in_range, HEAD, KV_QUANT).to(q.dtype)
            v = _dequant_rows(v, v_scale_ptr, row, in_range, HEAD, KV_QUANT).to(q.dtype)
        if UPCAST_DOT:
            k = k.to(tl.float32)
            v = v.to(tl.float32)
        s = tl.dot(q, tl.trans(k), input_precision="ieee") * scale  # [M, TILE]
        if USE_SOFT_CAP:
            s = _soft_cap(s, soft_cap)
        visible = (k_pos[None, :] <= q_pos[:, None]) & in_range[None, :]
        if WINDOW > 0:
            visible = visible & (k_pos[None, :] > q_pos[:, None] - WINDOW)
        s = tl.where(visible, s, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(s, axis=1))
        m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)  # rows with nothing visible yet
        alpha = tl.exp(m_i - m_safe)
        p = tl.exp(s - m_safe[:, None])
        l_i = l_i * alpha + tl.sum(p, axis=1)
        acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v, input_precision="ieee")
        m_i = m_new
    return acc, m_i, l_i


@triton.jit
def _unified_attention_kernel(
        out_ptr, q_ptr, k_cache_ptr, v_cache_ptr, k_scale_ptr, v_scale_ptr, tables_ptr,
        qsl_ptr, seq_lens_ptr, scale, soft_cap, num_reqs,
        stride_qt, stride_qh, stride_ot, stride_oh, stride_cn, stride_cs, stride_ch,
        stride_bt,
        GROUP: tl.constexpr, GROUP_PAD: tl.constexpr, HEAD: tl.constexpr,
        HEAD_PAD: tl.constexpr, BLOCK_SIZE: tl.constexpr, BLOCK_Q: tl.constexpr,
        TILE: tl.constexpr, WINDOW: tl.constexpr, USE_SOFT_CAP: tl.constexpr,
        UPCAST_DOT: tl.constexpr, KV_QUANT: tl.constexpr):
    program = tl.program_id(0)
    kv_head = tl.program_id(1)
    req = _find_request(qsl_ptr, num_reqs, program, BLOCK_Q)
    q_start = tl.load(qsl_ptr + req)
    q_len = tl.load(qsl_ptr + req + 1) - q_start
    local = program - (q_start // BLOCK_Q + req)
    if local * BLOCK_Q >= q_len:
        return
    context = tl.load(seq_lens_ptr + req) - q_len

    M: tl.constexpr = BLOCK_Q * GROUP_PAD
    rows = tl.arange(0, M)
    q_idx = local * BLOCK_Q + rows // GROUP_PAD
    g = rows % GROUP_PAD
    row_ok = (q_idx < q_len) & (g < GROUP)
    head = kv_head * GROUP + g
    dims = tl.arange(0, HEAD_PAD)
    mask = row_ok[:, None] & (dims[None, :] < HEAD)
    token = (q_start + q_idx).to(tl.int64)
    q = tl.load(q_ptr + token[:, None] * stride_qt + head[:, None] * stride_qh + dims[None, :],
                mask=mask, other=0.0)
    if UPCAST_DOT:
        q = q.to(tl.float32)
    q_pos = context + q_idx

    end_pos = context + tl.minimum((local + 1) * BLOCK_Q, q_len)  # keys this block may see
    first_tile = 0
    if WINDOW > 0:
        first_tile = tl.maximum(context + local * BLOCK_Q - WINDOW + 1, 0) // TILE
    acc = tl.zeros([M, HEAD_PAD], dtype=tl.float32)
    m_i = tl.full([M], float("-inf"), dtype=tl.float32)
    l_i = tl.zeros([M], dtype=tl.float32)
    acc, m_i, l_i = _attend_tiles(
        acc, m_i, l_i, q, q_pos, k_cache_ptr, v_cache_ptr, k_scale_ptr, v_scale_ptr,
        tables_ptr + req * stride_bt, first_tile, tl.cdiv(end_pos, TILE), end_pos, kv_head,
        scale, soft_cap, stride_cn, stride_cs, stride_ch, HEAD, HEAD_PAD, BLOCK_SIZE, TILE,
        WINDOW, USE_SOFT_CAP, UPCAST_DOT, KV_QUANT)
    out = acc / tl.where(l_i == 0.0, 1.0, l_i)[:, None]
    tl.store(out_ptr + token[:, None] * stride_ot + head[:, None] * stride_oh + dims[None, :],
             out.to(out_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _split_kv_decode_kernel(
        part_out_ptr, part_lse_ptr, q_ptr, k_cache_ptr, v_cache_ptr, k_scale_ptr,
        v_scale_ptr, tables_ptr, qsl_ptr, seq_lens_ptr, scale, soft_cap,
        stride_qt, stride_qh, stride_cn, stride_cs, stride_ch, stride_bt,
        NUM_HEADS: tl.constexpr, NUM_SPLITS: tl.constexpr,
        GROUP: tl.constexpr, ROWS: tl.constexpr, HEAD: tl.constexpr, HEAD_PAD: tl.constexpr,
        BLOCK_SIZE: tl.constexpr, TILE: tl.constexpr, WINDOW: tl.constexpr,
        USE_SOFT_CAP: tl.constexpr, UPCAST_DOT: tl.constexpr, KV_QUANT: tl.constexpr):
    """Partial results: part_out [R, Hq, P, DP] fp32, part_lse [R, Hq, P] fp32."""
    req = tl.program_id(0)
    kv_head = tl.program_id(1)
    split = tl.program_id(2)
    seq_len = tl.load(seq_lens_ptr + req)
    q_start = tl.load(qsl_ptr + req)
    q_len = tl.load(qsl_ptr + req + 1) - q_start  # 1, or 0 for a padding request

    g = tl.arange(0, ROWS)
    row_ok = g < GROUP * q_len
    head = kv_head * GROUP + g
    dims = tl.arange(0, HEAD_PAD)
    mask = row_ok[:, None] & (dims[None, :] < HEAD)
    q = tl.load(q_ptr + q_start.to(tl.int64) * stride_qt + head[:, None] * stride_qh +
                dims[None, :], mask=mask, other=0.0)
    if UPCAST_DOT:
        q = q.to(tl.float32)
    q_pos = tl.zeros([ROWS], dtype=tl.int32) + seq_len - 1

    num_tiles = tl.cdiv(seq_len, TILE)
    first_tile = 0
    if WINDOW > 0:
        first_tile = tl.maximum(seq_len - WINDOW, 0) // TILE
    per_split = tl.cdiv(num_tiles - first_tile, NUM_SPLITS)
    begin = first_tile + split * per_split
    end = tl.minimum(begin + per_split, num_tiles)
    acc = tl.zeros([ROWS, HEAD_PAD], dtype=tl.float32)
    m_i = tl.full([ROWS], float("-inf"), dtype=tl.float32)
    l_i = tl.zeros([ROWS], dtype=tl.float32)
    acc, m_i, l_i = _attend_tiles(
        acc, m_i, l_i, q, q_pos, k_cache_ptr, v_cache_ptr, k_scale_ptr, v_scale_ptr,
        tables_ptr + req * stride_bt, begin, end, seq_len, kv_head, scale, soft_cap,
        stride_cn, stride_cs, stride_ch, HEAD, HEAD_PAD, BLOCK_SIZE, TILE, WINDOW,
        USE_SOFT_CAP, UPCAST_DOT, KV_QUANT)
    safe_l = tl.where(l_i == 0.0, 1.0, l_i)
    lse = tl.where(l_i == 0.0, float("-inf"), m_i + tl.log(safe_l))
    base = (req * NUM_HEADS + head) * NUM_SPLITS + split
    tl.store(part_lse_ptr + base, lse, mask=row_ok)
    tl.store(part_out_ptr + base[:, None] * HEAD_PAD + dims[None, :], acc / safe_l[:, None],
             mask=row_ok[:, None])


@triton.jit
def _reduce_splits_kernel(out_ptr, part_out_ptr, part_lse_ptr, qsl_ptr, stride_ot, stride_oh,
                          NUM_HEADS: tl.constexpr, NUM_SPLITS: tl.constexpr,
                          HEAD: tl.constexpr, HEAD_PAD: tl.constexpr):
    req = tl.program_id(0)
    head = tl.program_id(1)
    q_start = tl.load(qsl_ptr + req)
    if tl.load(qsl_ptr + req + 1) == q_start:
        return
    splits = tl.arange(0, NUM_SPLITS)
    base = (req * NUM_HEADS + head) * NUM_SPLITS
    lse = tl.load(part_lse_ptr + base + splits)
    top = tl.max(lse, axis=0)
    weight = tl.where(lse == float("-inf"), 0.0, tl.exp(lse - top))
    dims = tl.arange(0, HEAD_PAD)
    parts = tl.load(part_out_ptr + (base + splits)[:, None] * HEAD_PAD + dims[None, :])
    out = tl.sum(parts * weight[:, None], axis=0) / tl.sum(weight, axis=0)
    tl.store(out_ptr + q_start.to(tl.int64) * stride_ot + head * stride_oh + dims,
             out.to(out_ptr.dtype.element_ty), mask=dims < HEAD)
