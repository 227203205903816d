"""Compile quire's Triton kernels ahead of time for real GPU targets (NVIDIA sm_80 / sm_90
to cubin, AMD gfx90a / gfx942 to hsaco) on a machine without a GPU. This catches what the
CPU interpreter cannot: tl.dot shape and dtype rules, layouts, register pressure, the AMD
options. Run with TRITON_INTERPRET unset; prints one line per compiled variant."""

from __future__ import annotations

import os
import sys

os.environ.pop("TRITON_INTERPRET", None)

import triton  # noqa: E402
from triton.backends.compiler import GPUTarget  # noqa: E402
from triton.compiler import ASTSource  # noqa: E402

from quire.backends.triton import kernels, moe, quant  # noqa: E402
from quire.backends.triton.config import KernelConfig, block_q_for, next_pow2  # noqa: E402

TARGETS = {
    "sm80": (GPUTarget("cuda", 80, 32), KernelConfig(num_stages=3, max_block_q=32)),
    "sm90": (GPUTarget("cuda", 90, 32), KernelConfig(num_stages=3, max_block_q=32)),
    "gfx90a": (GPUTarget("hip", "gfx90a", 64), KernelConfig(num_stages=1, waves_per_eu=2)),
    "gfx942": (GPUTarget("hip", "gfx942", 64), KernelConfig(num_stages=2, waves_per_eu=2)),
}
FLOAT_ARGS = {"scale", "soft_cap"}
DTYPES = {"bf16": "bf16", "fp16": "fp16", "fp32": "fp32"}


def signature(fn, dtype: str, constexprs: dict) -> dict[str, str]:
    sig = {}
    for name in fn.arg_names:
        if name in constexprs:
            sig[name] = "constexpr"
        elif name in ("part_out_ptr", "part_lse_ptr"):
            sig[name] = "*fp32"
        elif name in ("tables_ptr", "qsl_ptr", "seq_lens_ptr", "sorted_ptr",
                      "block_expert_ptr"):
            sig[name] = "*i32"
        elif name == "weights_ptr":
            sig[name] = "*fp32"
        elif name == "qw_ptr":
            sig[name] = "*u8" if constexprs.get("BITS") == 4 else "*i8"
        elif name in ("k_scale_ptr", "v_scale_ptr"):
            sig[name] = "*fp32" if constexprs.get("KV_QUANT") else f"*{dtype}"
        elif name in ("k_cache_ptr", "v_cache_ptr") and constexprs.get("KV_QUANT"):
            sig[name] = "*i8" if constexprs["KV_QUANT"] == 1 else "*u8"
        elif name in ("scales_ptr", "mins_ptr"):
            sig[name] = "*fp16"
        elif name == "slot_ptr":
            sig[name] = "*i64"
        elif name.endswith("_ptr"):
            sig[name] = f"*{dtype}"
        elif name in FLOAT_ARGS:
            sig[name] = "fp32"
        else:
            sig[name] = "i32"
    return sig


def compile_one(fn, dtype: str, constexprs: dict, target, cfg: KernelConfig) -> str:
    options = {"num_warps": cfg.num_warps, "num_stages": cfg.num_stages}
    if target.backend == "hip" and cfg.waves_per_eu:
        options["waves_per_eu"] = cfg.waves_per_eu
    src = ASTSource(fn, signature(fn, dtype, constexprs), constexprs)
    compiled = triton.compile(src, target=target, options=options)
    return "cubin" if "cubin" in compiled.asm else "hsaco"


def variants(cfg: KernelConfig):
    """(kernel, dtype, constexprs) for a spread of shapes the backends launch."""
    for dtype in ("bf16", "fp16"):
        yield kernels._write_kv_kernel, dtype, {"NUM_KV_HEADS": 3, "HEADS_PAD": 4, "HEAD": 80,
                                                "HEAD_PAD": 128, "BLOCK_SIZE": 16}
    for dtype, group, head, window, cap, max_q, kv_quant in [
        ("bf16", 4, 128, 0, False, 1, 0), ("bf16", 4, 128, 0, False, 512, 0),
        ("fp16", 1, 64, 4096, False, 64, 0), ("bf16", 3, 80, 0, True, 128, 0),
        ("fp32", 8, 256, 0, False, 1, 0), ("bf16", 8, 96, 0, False, 2048, 0),
        ("bf16", 4, 128, 0, False, 256, 1), ("fp16", 4, 64, 0, False, 1, 2),  # 8-bit caches
    ]:
        tile = cfg.decode_tile if max_q == 1 else cfg.prefill_tile
        common = {"HEAD": head, "HEAD_PAD": next_pow2(head), "BLOCK_SIZE": 16, "TILE": tile,
                  "WINDOW": window, "USE_SOFT_CAP": cap, "UPCAST_DOT": False,
                  "KV_QUANT": kv_quant}
        yield kernels._unified_attention_kernel, dtype, {
            "GROUP": group, "GROUP_PAD": next_pow2(group),
            "BLOCK_Q": block_q_for(group, max_q, cfg), **common}
        if max_q == 1:
            yield kernels._split_kv_decode_kernel, dtype, {
                "NUM_HEADS": 8 * group, "NUM_SPLITS": 8, "GROUP": group,
                "ROWS": max(cfg.min_rows, next_pow2(group)), **common}
            yield kernels._reduce_splits_kernel, dtype, {
                "NUM_HEADS": 8 * group, "NUM_SPLITS": 8, "HEAD": head,
                "HEAD_PAD": next_pow2(head)}


    for dtype, row_div, mul, block_n, block_k in [("bf16", 2, False, 64, 64),
                                                  ("fp16", 1, True, 32, 64)]:
        yield moe._grouped_gemm_kernel, dtype, {
            "ROW_DIV": row_div, "MUL_WEIGHT": mul, "BLOCK_M": 16, "BLOCK_N": block_n,
            "BLOCK_K": block_k, "UPCAST_DOT": False}
    for dtype, bits, group, mins in [("bf16", 4, 32, True), ("fp16", 8, 16, False),
                                     ("bf16", 8, 32, True)]:
        yield quant._quant_gemm_kernel, dtype, {
            "BITS": bits, "GS": group, "HAS_MINS": mins, "BLOCK_M": 16, "BLOCK_N": 64,
            "UPCAST_DOT": False}


def main(names: list[str]) -> int:
    failures = 0
    for name in names:
        target, cfg = TARGETS[name]
        for fn, dtype, constexprs in variants(cfg):
            label = f"{name} {fn.__name__} {dtype} {sorted(constexprs.items())}"
            try:
                sys.stdout.write(f"ok {compile_one(fn, dtype, constexprs, target, cfg)} "
                                 f"{label}\n")
            except Exception as exc:  # report every failing variant, then fail
                failures += 1
                sys.stdout.write(f"FAIL {label}: {type(exc).__name__}: {exc}\n"[:2000])
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:] or list(TARGETS)))
