"""GpuExecutor: the torch family on a GPU with quire's Triton attention, fused MoE and
weight-only quantized GEMM, and CUDA/HIP graphs for decode steps. The cuda and rocm
backends subclass it with their kernel configuration. TritonInterpretExecutor runs the same
kernels on the CPU under TRITON_INTERPRET=1.
"""

from __future__ import annotations

import logging
import os
import time

import torch

from quire.backends.torch.executor import TorchExecutor
from quire.backends.triton.attention import TritonAttention
from quire.backends.triton.config import GpuPlatform, KernelConfig, interpreting
from quire.backends.triton.quant import TritonQuantKernel
from quire.core.batch import Batch
from quire.core.config import EngineConfig
from quire.core.executor import Capabilities, ModelInfo, ModelOutput
from quire.core.sizing import KV_QUANT_DTYPES, block_table_width

logger = logging.getLogger(__name__)

GRAPH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)
# Decode batches pad to the request buckets (and equal token buckets): graph shapes.
# Larger token counts (prefill) pad to multiples of 256, a little waste for few shapes.
TOKEN_BUCKETS = GRAPH_BUCKETS + tuple(range(512, 16385, 256))


class GpuExecutor(TorchExecutor):
    """Subclasses set `device` and `platform` (a GpuPlatform): probe() -> device facts or
    None, kernel_config(device) -> KernelConfig, and a `REQUIRES` message for no device."""

    platform: GpuPlatform | None = None

    def __init__(self, config: EngineConfig, extra_models: dict | None = None,
                 extra_quantization: dict | None = None) -> None:
        super().__init__(config, extra_models, extra_quantization)
        cfg = self.kernel_config()
        # Each engine gets its own AttentionImpl class carrying this device's tuning.
        self.attention_cls = type("TunedTritonAttention", (TritonAttention,),
                                  {"kernel_config": cfg})
        self.use_graphs = os.environ.get("QUIRE_CUDA_GRAPHS", "1") != "0"
        self.graphs = None

    @property
    def quant_kernel(self) -> TritonQuantKernel:  # type: ignore[override]
        """Packed weights (GGUF, GPTQ, AWQ, int8) in the Triton W4A16 / W8A16 GEMM."""
        return TritonQuantKernel()

    def kernel_config(self) -> KernelConfig:
        if self.platform is None:
            return KernelConfig()
        device = self.platform.probe()
        if device is None:
            raise ValueError(self.platform.REQUIRES)
        return self.platform.kernel_config(device)

    def load_model(self, model_path: str, dtype: str) -> ModelInfo:
        info = super().load_model(model_path, dtype)
        from quire.backends.triton.moe import use_triton_moe

        assert self.model is not None
        use_triton_moe(self.model)  # experts in the Triton grouped GEMM (moe.py)
        return info

    @classmethod
    def capabilities(cls) -> Capabilities:
        return Capabilities(
            dtypes=("bfloat16", "float16", "float32"),
            default_dtype="bfloat16",
            block_sizes=(8, 16, 32, 64, 128),
            token_buckets=TOKEN_BUCKETS,
            request_buckets=GRAPH_BUCKETS,
            max_num_seqs=GRAPH_BUCKETS[-1],
            kv_cache_dtypes=("auto", *KV_QUANT_DTYPES),
            hybrid_kv_cache=True,
        )

    def allocate_kv_cache(self, num_blocks: int, block_size: int,
                          kv_groups: tuple = ()) -> None:
        super().allocate_kv_cache(num_blocks, block_size, kv_groups)
        if self.use_graphs and self.device.type == "cuda":
            from quire.backends.triton.graphs import DecodeGraphs

            assert self.info is not None
            max_len = self.config.max_model_len or self.info.max_model_len
            max_pages = block_table_width(max_len, block_size, num_blocks)
            self.graphs = DecodeGraphs(self.model, self.kv_caches, GRAPH_BUCKETS, max_pages,
                                       max_len, self.device)

    @torch.inference_mode()
    def execute(self, batch: Batch) -> ModelOutput:
        if self.graphs is None or not self.graphs.can_run(batch):
            return super().execute(batch)
        t0 = time.perf_counter()
        logits = self.graphs.run(batch)
        return self.sample(logits, batch, {"forward": time.perf_counter() - t0})

    def shutdown(self) -> None:
        self.graphs = None
        super().shutdown()


class TritonInterpretExecutor(GpuExecutor):
    """quire's Triton kernels on the CPU, in Triton's interpreter: for tests (slow)."""

    device = torch.device("cpu")

    def __init__(self, config: EngineConfig, extra_models: dict | None = None,
                 extra_quantization: dict | None = None) -> None:
        if not interpreting():
            raise ValueError("the triton-interpret backend needs TRITON_INTERPRET=1 in the "
                             "environment before triton is imported")
        super().__init__(config, extra_models, extra_quantization)
        self.use_graphs = False

    @classmethod
    def capabilities(cls) -> Capabilities:
        return Capabilities(dtypes=("float32", "bfloat16", "float16"), default_dtype="float32",
                            block_sizes=(8, 16, 32, 64, 128),
                            kv_cache_dtypes=("auto", *KV_QUANT_DTYPES),
                            hybrid_kv_cache=True)
