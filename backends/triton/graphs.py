"""CUDA graph capture of decode steps (HIP graphs on ROCm: same torch API).

A decode step (every request has one new token) padded by the core to a request bucket R
(and the same token bucket) has fixed shapes, so the model forward plus the logits of all
R rows is captured once per bucket and replayed with new inputs copied into its static
buffers. Padding rows have a zero-length query and seq_len 0; their token writes slot 0
(the null block). Block tables are captured at the width that max_model_len needs.
The attention metadata's host maxima are fixed at capture (max_query_len 1, max_seq_len =
max_model_len), so the split-KV choice depends on the bucket only.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
import torch

from quire.backends.torch.attention import AttentionMetadata
from quire.core.batch import Batch

logger = logging.getLogger(__name__)


@dataclass(slots=True)
class _Captured:
    graph: torch.cuda.CUDAGraph
    inputs: dict[str, torch.Tensor]
    logits: torch.Tensor  # [R, V] fp32


class DecodeGraphs:
    def __init__(self, model: torch.nn.Module, kv_caches: list[torch.Tensor],
                 buckets: tuple[int, ...], max_pages: int, max_model_len: int,
                 device: torch.device) -> None:
        self.model, self.kv_caches = model, kv_caches
        self.buckets = frozenset(buckets)
        self.max_pages, self.max_model_len, self.device = max_pages, max_model_len, device
        self.captured: dict[int, _Captured] = {}
        self.pool = None

    def can_run(self, batch: Batch) -> bool:
        num_rows = len(batch.seq_lens)
        return (batch.max_query_len == 1 and len(batch.input_ids) == num_rows
                and num_rows in self.buckets
                and batch.block_tables.shape[1] <= self.max_pages
                and batch.num_kv_groups == 1  # (hybrid KV caches run eagerly)
                and np.array_equal(batch.logits_indices, np.arange(batch.num_reqs)))

    @torch.inference_mode()
    def run(self, batch: Batch) -> torch.Tensor:
        """Logits [num_reqs, V] of a decode batch that can_run."""
        num_rows = len(batch.seq_lens)
        entry = self.captured.get(num_rows) or self._capture(num_rows)
        inputs = entry.inputs
        inputs["input_ids"].copy_(torch.from_numpy(batch.input_ids))
        inputs["positions"].copy_(torch.from_numpy(batch.positions))
        inputs["slot_mapping"].copy_(torch.from_numpy(batch.slot_mapping))
        inputs["query_start_loc"].copy_(torch.from_numpy(batch.query_start_loc))
        inputs["seq_lens"].copy_(torch.from_numpy(batch.seq_lens))
        tables = np.zeros((num_rows, self.max_pages), np.int32)
        tables[:, : batch.block_tables.shape[1]] = batch.block_tables
        inputs["block_tables"].copy_(torch.from_numpy(tables))
        entry.graph.replay()
        return entry.logits[: batch.num_reqs]

    def _capture(self, num_rows: int) -> _Captured:
        dev = self.device
        inputs = {
            "input_ids": torch.zeros(num_rows, dtype=torch.long, device=dev),
            "positions": torch.zeros(num_rows, dtype=torch.long, device=dev),
            "slot_mapping": torch.zeros(num_rows, dtype=torch.long, device=dev),
            "query_start_loc": torch.arange(num_rows + 1, dtype=torch.int32, device=dev),
            "seq_lens": torch.ones(num_rows, dtype=torch.int32, device=dev),
            "block_tables": torch.zeros(num_rows, self.max_pages, dtype=torch.int32,
                                        device=dev),
        }
        md = AttentionMetadata(
            slot_mapping=inputs["slot_mapping"], query_start_loc=inputs["query_start_loc"],
            seq_lens=inputs["seq_lens"], block_tables=inputs["block_tables"],
            query_start_loc_host=np.arange(num_rows + 1, dtype=np.int32),
            seq_lens_host=np.ones(num_rows, dtype=np.int32), num_reqs=num_rows,
            max_query_len=1, max_seq_len=self.max_model_len)

        def step() -> torch.Tensor:
            hidden = self.model(inputs["input_ids"], inputs["positions"], self.kv_caches, md)
            return self.model.compute_logits(hidden)

        side = torch.cuda.Stream(device=dev)
        side.wait_stream(torch.cuda.current_stream(dev))
        with torch.cuda.stream(side):  # warm up: autotuning and allocations off the graph
            step()
        torch.cuda.current_stream(dev).wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, pool=self.pool):
            logits = step()
        self.pool = graph.pool()
        logger.info("captured a decode graph for %d requests", num_rows)
        self.captured[num_rows] = _Captured(graph, inputs, logits)
        return self.captured[num_rows]
