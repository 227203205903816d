"""quire's Pallas ragged paged attention for TPUs: mixed prefill / chunked prefill / decode
in one call, GQA, causal, optional sliding window and logit soft-cap.

Dimensions: T tokens, Hq query heads, Hkv KV heads, G = Hq / Hkv, D head size, N blocks
(pages), S page size, R requests, B max pages per request, Q query block, NQ query blocks,
P pages per compute block.

Grid (Hkv, NQ): one program per KV head and query block. Its Q queries times G heads form
one [Q*G, D] tile, so the score and value matmuls are well shaped even for decode. The
program streams its request's pages from HBM into VMEM P at a time (double buffered async
copies), keeping an online softmax (running max, running sum, fp32 accumulator).
Queries reach the kernel in the query-block layout of metadata.py; the host builds it.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import jax
import jax.numpy as jnp
from jax import lax
from jax.experimental import pallas as pl
from jax.experimental.pallas import tpu as pltpu

from quire.backends.tpu.metadata import TpuAttentionMetadata

_MASK = -0.7 * float(jnp.finfo(jnp.float32).max)


@dataclass(frozen=True, slots=True)
class KernelParams:
    """The kernel's tunables. TPU speed cannot be measured where quire is tested, so these
    are documented defaults, not tuned values.

    query_block: queries per program (Q). Larger tiles feed the MXU better in prefill;
        decode uses one row per request of each tile, so large Q wastes compute there.
    pages_per_block: pages fetched per compute step (P). More pages make longer, cheaper
        DMAs and wider score tiles, at 2 * 2 * P * S * D * itemsize bytes of VMEM
        (keys and values, double buffered) and more masked work on a request's last step.
    vmem_limit_bytes: the VMEM budget handed to Mosaic (None: its default, 16-32 MiB
        depending on the chip). Raise it with P or D; it bounds what fits at once.
    megacore: which grid axis the two TensorCores of a megacore chip (v4, v5p) split:
        "kv_heads" (even work when Hkv is even), "query_blocks" (better when Hkv is 1 or
        odd), or "none".
    """

    query_block: int = 8
    pages_per_block: int = 4
    vmem_limit_bytes: int | None = None
    megacore: str = "kv_heads"

    def __post_init__(self) -> None:
        if self.query_block < 1 or self.pages_per_block < 1:
            raise ValueError("query_block and pages_per_block must be at least 1")
        if self.megacore not in ("kv_heads", "query_blocks", "none"):
            raise ValueError(f"megacore must be kv_heads, query_blocks or none, "
                             f"got {self.megacore!r}")

    def dimension_semantics(self) -> tuple[str, str]:
        return {"kv_heads": ("parallel", "arbitrary"),
                "query_blocks": ("arbitrary", "parallel"),
                "none": ("arbitrary", "arbitrary")}[self.megacore]


def ragged_paged_attention(query: jax.Array, key_cache: jax.Array, value_cache: jax.Array,
                           md: TpuAttentionMetadata, *, scale: float,
                           sliding_window: int | None = None, soft_cap: float | None = None,
                           params: KernelParams = KernelParams(),
                           interpret: bool = False) -> jax.Array:
    """query [T, Hq, D]; key/value_cache [Hkv, N, S, D]; md built with
    query_block == params.query_block -> [T, Hq, D] in query's dtype."""
    num_tokens, num_heads, head_size = query.shape
    num_kv_heads, _, page_size, cache_head_size = key_cache.shape
    if cache_head_size != head_size or num_heads % num_kv_heads:
        raise ValueError(f"query [T, {num_heads}, {head_size}] does not fit a cache of "
                         f"{num_kv_heads} KV heads of size {cache_head_size}")
    q_block = params.query_block
    num_q_blocks = md.block_seq.shape[0]
    if md.row_token.shape[0] != num_q_blocks * q_block:
        raise ValueError("metadata was built for another query_block")
    group = num_heads // num_kv_heads
    rows = q_block * group
    # [T, Hq, D] -> query-block layout [Hkv, NQ*Q*G, D], rows ordered (block, query, head).
    q = query[md.row_token].reshape(num_q_blocks * q_block, num_kv_heads, group, head_size)
    q = q.transpose(1, 0, 2, 3).reshape(num_kv_heads, num_q_blocks * rows, head_size)
    pages = params.pages_per_block
    kernel = functools.partial(
        _kernel, scale=scale, window=sliding_window, soft_cap=soft_cap, group=group,
        page_size=page_size, pages=pages, max_pages=md.block_tables.shape[1])
    tile = pl.BlockSpec((None, rows, head_size), lambda h, b, *_: (h, b, 0))
    out = pl.pallas_call(
        kernel,
        grid_spec=pltpu.PrefetchScalarGridSpec(
            num_scalar_prefetch=4,
            grid=(num_kv_heads, num_q_blocks),
            in_specs=[tile, pl.BlockSpec(memory_space=pl.ANY),
                      pl.BlockSpec(memory_space=pl.ANY)],
            out_specs=tile,
            scratch_shapes=[
                pltpu.VMEM((2, pages * page_size, head_size), key_cache.dtype),
                pltpu.VMEM((2, pages * page_size, head_size), value_cache.dtype),
                pltpu.SemaphoreType.DMA((2,)),
            ],
        ),
        out_shape=jax.ShapeDtypeStruct(q.shape, query.dtype),
        compiler_params=pltpu.CompilerParams(
            dimension_semantics=params.dimension_semantics(),
            vmem_limit_bytes=params.vmem_limit_bytes),
        interpret=interpret,
    )(md.block_seq, md.block_first_pos, md.block_num_queries, md.block_tables.reshape(-1),
      q, key_cache, value_cache)
    out = out.reshape(num_kv_heads, num_q_blocks * q_block, group, head_size)
    out = out.transpose(1, 0, 2, 3).reshape(num_q_blocks * q_block, num_heads, head_size)
    return out[md.token_row]


def _kernel(block_seq_ref, block_first_pos_ref, block_num_queries_ref, tables_ref,  # SMEM
            q_ref, k_hbm, v_hbm,  # [Q*G, D] VMEM tile; [Hkv, N, S, D] caches in HBM
            o_ref,  # [Q*G, D]
            k_buf, v_buf, sems,  # [2, P*S, D] VMEM each; two DMA semaphores
            *, scale: float, window: int | None, soft_cap: float | None, group: int,
            page_size: int, pages: int, max_pages: int) -> None:
    head, block = pl.program_id(0), pl.program_id(1)
    num_queries = block_num_queries_ref[block]

    @pl.when(num_queries == 0)
    def _padding_block() -> None:
        o_ref[...] = jnp.zeros_like(o_ref)

    @pl.when(num_queries > 0)
    def _attend() -> None:
        seq = block_seq_ref[block]
        first_pos = block_first_pos_ref[block]
        last_page = (first_pos + num_queries - 1) // page_size
        first_page = 0
        if window is not None:
            first_page = jnp.maximum(first_pos - window + 1, 0) // page_size
        num_steps = (last_page - first_page) // pages + 1

        def copies(step, slot) -> list:
            descs = []
            for p in range(pages):
                # Past the request's last page, fetch that page again; the mask hides it.
                page = jnp.minimum(first_page + step * pages + p, last_page)
                page_id = tables_ref[seq * max_pages + page]
                dst = pl.ds(p * page_size, page_size)
                descs.append(pltpu.make_async_copy(k_hbm.at[head, page_id],
                                                   k_buf.at[slot, dst], sems.at[slot]))
                descs.append(pltpu.make_async_copy(v_hbm.at[head, page_id],
                                                   v_buf.at[slot, dst], sems.at[slot]))
            return descs

        for desc in copies(0, 0):
            desc.start()
        q = q_ref[...]
        shape = (q.shape[0], pages * page_size)
        q_pos = first_pos + lax.broadcasted_iota(jnp.int32, shape, 0) // group
        precision = lax.Precision.HIGHEST if q.dtype == jnp.float32 else None

        def step_fn(step, carry):
            m_prev, l_prev, acc_prev = carry
            slot = step % 2

            @pl.when(step + 1 < num_steps)
            def _prefetch() -> None:
                for desc in copies(step + 1, 1 - slot):
                    desc.start()

            for desc in copies(step, slot):
                desc.wait()
            k, v = k_buf[slot], v_buf[slot]
            s = lax.dot_general(q, k, (((1,), (1,)), ((), ())), precision=precision,
                                preferred_element_type=jnp.float32) * scale
            if soft_cap is not None:
                s = soft_cap * jnp.tanh(s / soft_cap)
            k_pos = (first_page + step * pages) * page_size + \
                lax.broadcasted_iota(jnp.int32, shape, 1)
            visible = k_pos <= q_pos
            if window is not None:
                visible &= k_pos > q_pos - window
            s = jnp.where(visible, s, _MASK)
            m = jnp.maximum(m_prev, s.max(axis=1, keepdims=True))
            alpha = jnp.exp(m_prev - m)
            p = jnp.exp(s - m)
            l_new = alpha * l_prev + p.sum(axis=1, keepdims=True)
            pv = lax.dot_general(p.astype(v.dtype), v, (((1,), (0,)), ((), ())),
                                 precision=precision, preferred_element_type=jnp.float32)
            return m, l_new, alpha * acc_prev + pv

        init = (jnp.full((q.shape[0], 1), _MASK, jnp.float32),
                jnp.zeros((q.shape[0], 1), jnp.float32),
                jnp.zeros(q.shape, jnp.float32))
        _, l_fin, acc = lax.fori_loop(0, num_steps, step_fn, init)
        o_ref[...] = (acc / l_fin).astype(o_ref.dtype)
