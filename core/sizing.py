"""Backend-neutral arithmetic: ceil division, dtype resolution, KV bytes per block, and the
fixed block-table width. A backend gets these right by calling them, not by rewriting them."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:  # types only: executor.py itself uses these helpers
    from quire.core.executor import Capabilities, ModelInfo

DTYPE_BYTES = {"float32": 4, "float16": 2, "bfloat16": 2}
# 8-bit KV caches: each (token, KV head) row holds head_size one-byte values and a float32
# scale (the torch family's layout: backends/torch/kv_quant.py).
KV_QUANT_DTYPES = ("int8", "fp8_e4m3")
KV_SCALE_BYTES = 4


def cdiv(a: int, b: int) -> int:
    """Ceiling of a / b for non-negative a and positive b."""
    return -(-a // b)


def resolve_dtype(requested: str, checkpoint_dtype: str | None, caps: Capabilities) -> str:
    """The engine dtype: the requested one if the backend supports it (ValueError if not);
    for "auto", the checkpoint's own dtype when supported, else the backend's default."""
    if requested != "auto":
        if requested not in caps.dtypes:
            raise ValueError(f"dtype {requested!r} is not supported by this backend; "
                             f"supported: {', '.join(caps.dtypes)}")
        return requested
    if checkpoint_dtype in caps.dtypes:
        return checkpoint_dtype  # type: ignore[return-value]
    return caps.default_dtype


def kv_cache_bytes_per_block(info: ModelInfo, block_size: int,
                             kv_cache_dtype: str = "auto") -> int:
    """Keys and values of one block across all layers, in the model's dtype, or with an
    8-bit kv_cache_dtype one byte per value plus a scale per (token, KV head)."""
    if kv_cache_dtype in KV_QUANT_DTYPES:
        row = info.head_size + KV_SCALE_BYTES
    elif info.dtype in DTYPE_BYTES:
        row = info.head_size * DTYPE_BYTES[info.dtype]
    else:
        raise ValueError(f"no element size known for dtype {info.dtype!r}")
    return 2 * info.num_layers * block_size * info.num_kv_heads * row


def block_table_width(max_model_len: int, block_size: int, num_blocks: int) -> int:
    """Columns a fixed-width block table needs: enough blocks for max_model_len tokens, and
    never more than the cache's usable blocks (block 0 is the null block)."""
    return max(1, min(cdiv(max_model_len, block_size), num_blocks - 1))
