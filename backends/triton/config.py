"""Launch configuration of the Triton kernels, and the split-KV heuristic. Platforms fill
KernelConfig from their tuning tables (cuda: by compute capability; rocm: by gfx arch)."""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, Protocol

from quire.core.sizing import cdiv


@dataclass(frozen=True, slots=True)
class KernelConfig:
    """min_rows: the smallest tile height M = Q * GP (tl.dot wants at least 16 rows).
    max_block_q: queries per program for prefill (Q), a power of two.
    prefill_tile / decode_tile: keys per inner step (a tile may span pages). Wider tiles
        make bigger dots for prefill; decode tiles stay small so short contexts waste
        little.
    num_warps / num_stages: Triton's launch options (a warp is 32 lanes on NVIDIA, a
        wavefront of 64 on AMD CDNA, so AMD uses fewer warps for the same tile).
    waves_per_eu: AMD occupancy hint (0: the compiler's choice; never passed on NVIDIA).
    target_programs: programs that keep the whole device busy (about 2-4 per SM / CU).
    split_min_tokens / split_max: see num_kv_splits.
    fp8_dtype: the fp8 format of this platform ("float8_e4m3fn" on NVIDIA; the "fnuz"
        variant on AMD CDNA3), used where fp8 KV caches are enabled.
    """

    min_rows: int = 16
    max_block_q: int = 16
    prefill_tile: int = 64
    decode_tile: int = 32
    num_warps: int = 4
    num_stages: int = 2
    waves_per_eu: int = 0
    target_programs: int = 264
    split_min_tokens: int = 512
    split_max: int = 16
    fp8_dtype: str = "float8_e4m3fn"

    def launch_options(self) -> dict[str, int]:
        options = {"num_warps": self.num_warps, "num_stages": self.num_stages}
        if self.waves_per_eu:
            options["waves_per_eu"] = self.waves_per_eu
        return options


def next_pow2(n: int) -> int:
    return 1 << max(0, int(n) - 1).bit_length()


def block_q_for(group: int, max_query_len: int, cfg: KernelConfig) -> int:
    """Queries per program: enough to give the tile min_rows rows, more for prefill."""
    floor = max(1, cfg.min_rows // next_pow2(group))
    return max(floor, min(cfg.max_block_q, next_pow2(max_query_len)))


def num_kv_splits(num_reqs: int, num_kv_heads: int, max_seq_len: int, max_query_len: int,
                  cfg: KernelConfig) -> int:
    """The split-KV (flash-decoding) heuristic. Decode launches R * Hkv programs of the
    unified kernel; when that is less than target_programs, most of the device idles while
    each program walks a long context alone. Then the context is cut into P splits (a
    power of two) so that R * Hkv * P reaches target_programs, each split keeping at least
    split_min_tokens tokens (below that, the merge costs more than it saves), at most
    split_max. Returns 1 (no split) for batches with prefill queries or short contexts."""
    if max_query_len != 1:
        return 1
    programs = max(1, num_reqs * num_kv_heads)
    by_occupancy = cdiv(cfg.target_programs, programs)
    by_length = max_seq_len // cfg.split_min_tokens
    splits = min(by_occupancy, by_length, cfg.split_max)
    if splits < 2:
        return 1
    return 1 << (splits.bit_length() - 1)  # round down to a power of two


def interpreting() -> bool:
    """Whether Triton runs kernels in its CPU interpreter (TRITON_INTERPRET=1)."""
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


def tile_for(max_query_len: int, cfg: KernelConfig) -> int:
    return cfg.decode_tile if max_query_len == 1 else cfg.prefill_tile


class GpuPlatform(Protocol):
    """What a GPU platform (backends/cuda/platform.py, backends/rocm/platform.py, or a
    vendor's) gives GpuExecutor: a device probe and its tuning. A module with these three
    names satisfies it."""

    REQUIRES: str  # the error message when no device is found

    def probe(self) -> Any | None:
        """The device's facts, or None when there is no usable device."""

    def kernel_config(self, device: Any) -> KernelConfig:
        """Launch options tuned for that device."""

