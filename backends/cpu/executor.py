"""The cpu backend's executor: the torch family on the host, with native attention, packed
linears and fused elementwise kernels swapped into the model after loading."""

from __future__ import annotations

from quire.backends.cpu import decode_layer, native, quant_native
from quire.backends.cpu.attention import CpuAttention
from quire.backends.cpu.fused import fuse_elementwise
from quire.backends.cpu.linear import pack_head, pack_linears
from quire.backends.cpu.moe import pack_experts
from quire.backends.cpu.quant_native import CpuQuantKernel
from quire.backends.torch.executor import TorchExecutor
from quire.backends.torch.sampler import Sampler
from quire.core.config import EngineConfig
from quire.core.executor import Capabilities, ModelInfo
from quire.core.sizing import KV_QUANT_DTYPES


class CpuExecutor(TorchExecutor):
    attention_cls = CpuAttention

    def __init__(self, config: EngineConfig, *args, **kwargs) -> None:
        super().__init__(config, *args, **kwargs)
        self.sampler = Sampler(config.seed, argmax=native.argmax)  # the native kernel

    @property
    def quant_kernel(self) -> CpuQuantKernel | None:  # type: ignore[override]
        """GGUF Q4_0/Q4_1/Q5_0/Q5_1/Q8_0 weights stay packed (quant_native.py), unless the
        kernel cannot be built here."""
        return CpuQuantKernel() if quant_native.available() else None

    @classmethod
    def capabilities(cls) -> Capabilities:
        return Capabilities(
            dtypes=("float32", "bfloat16", "float16"),
            default_dtype="bfloat16",
            block_sizes=(1, 2, 4, 8, 16, 32, 64, 128),
            kv_cache_dtypes=("auto", *KV_QUANT_DTYPES),
            hybrid_kv_cache=True,
        )

    def load_model(self, model_path: str, dtype: str) -> ModelInfo:
        info = super().load_model(model_path, dtype)
        assert self.model is not None
        pack_head(self.model)  # the head, with an fp32 copy where that runs faster
        pack_linears(self.model)  # oneDNN-packed weights: see backends/cpu/linear.py
        pack_experts(self.model)  # the same for each expert: moe.py
        fuse_elementwise(self.model)  # one-pass norms, activation, rope: fused.py
        decode_layer.install(self.model)  # decode steps' layers in one call: decode_layer.py
        return info
