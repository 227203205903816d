"""Bench output: a table on stdout, a JSON file and a PNG plot."""

from __future__ import annotations

import json
import logging
import os
import platform
import time
from typing import Any

logger = logging.getLogger(__name__)

_COLUMNS = [("system", "{}"), ("requests_per_s", "{:.2f}"), ("output_tok_per_s", "{:.1f}"),
            ("total_tok_per_s", "{:.1f}"), ("ttft_s_p50", "{:.3f}"), ("ttft_s_p99", "{:.3f}"),
            ("itl_s_p50", "{:.4f}"), ("itl_s_p99", "{:.4f}"), ("tpot_s_p50", "{:.4f}"),
            ("kv_peak_blocks", "{}"), ("kv_waste_pct", "{:.2f}"), ("prefix_hit_rate", "{:.3f}"),
            ("preemptions", "{}"), ("spec_acceptance_rate", "{:.3f}"),
            ("spec_mean_accepted_len", "{:.2f}")]
_TIME_KEYS = ("schedule", "batch", "forward", "logits", "sample", "update", "output")


def time_breakdown(rows: list[dict[str, Any]]) -> str:
    """One line per quire row: % of step time per phase."""
    lines = []
    for r in rows:
        if f"time_{_TIME_KEYS[0]}_pct" in r:
            parts = ", ".join(f"{k} {r[f'time_{k}_pct']:.1f}%" for k in _TIME_KEYS)
            lines.append(f"{r['system']}: {parts}")
    return "\n".join(lines)


def table(rows: list[dict[str, Any]]) -> str:
    cols = [(c, f) for c, f in _COLUMNS if any(c in r for r in rows)]
    cells = [[c for c, _ in cols]] + [[f.format(r[c]) if c in r else "-" for c, f in cols]
                                      for r in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(cols))]
    return "\n".join("  ".join(v.ljust(w) for v, w in zip(row, widths)) for row in cells)


def machine() -> str:
    """The CPU a benchmark ran on, as every result records it: model name, cores, and the
    vector extensions the native kernels dispatch on (machines of one kind differ here)."""
    name, flags = platform.processor() or platform.machine(), set()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                key, _, value = line.partition(":")
                if key.strip() == "model name":
                    name = value.strip()
                elif key.strip() == "flags":
                    flags = set(value.split())
                    break
    except OSError:
        pass
    isa = [f for f in ("avx2", "avx512f", "avx512_bf16", "avx512_vnni", "amx_bf16")
           if f in flags]
    return f"{name}, {os.cpu_count()} cores" + (f" ({' '.join(isa)})" if isa else "")


def write(kind: str, rows: list[dict[str, Any]], settings: dict[str, Any],
          output_dir: str) -> str:
    """Write JSON (+ PNG when matplotlib is installed); returns the JSON path."""
    os.makedirs(output_dir, exist_ok=True)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    path = os.path.join(output_dir, f"{kind}-{stamp}.json")
    doc = {"kind": kind, "date": time.strftime("%Y-%m-%d %H:%M:%S"),
           "machine": machine(),
           "settings": settings, "results": rows}
    with open(path, "w") as f:
        json.dump(doc, f, indent=2)
    _plot(rows, path[: -len(".json")] + ".png", kind)
    return path


def _plot(rows: list[dict[str, Any]], path: str, kind: str) -> None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        logger.info("matplotlib not installed: no plot (pip install 'quire[bench]')")
        return
    metrics = [m for m in ("output_tok_per_s", "ttft_s_p50", "itl_s_p50",
                           "step_ms_unconstrained", "step_ms_json_schema")
               if any(m in r for r in rows)]
    if not metrics:
        return
    fig, axes = plt.subplots(1, len(metrics), figsize=(5 * len(metrics), 4), squeeze=False)
    labels = [r["system"] for r in rows]
    for ax, m in zip(axes[0], metrics):
        ax.bar(range(len(rows)), [r.get(m, 0) for r in rows], color="tab:blue")
        ax.set_xticks(range(len(rows)), labels, rotation=30, ha="right", fontsize=8)
        ax.set_title(m)
    fig.suptitle(f"quire bench {kind}")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
