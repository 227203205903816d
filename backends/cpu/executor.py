"""The cpu backend: the torch family on the host with the reference attention."""

from __future__ import annotations

from quire.backends.cpu.attention import CpuAttention
from quire.backends.torch.executor import TorchExecutor
from quire.core.executor import Capabilities


class CpuExecutor(TorchExecutor):
    attention_cls = CpuAttention

    @classmethod
    def capabilities(cls) -> Capabilities:
        return Capabilities(
            dtypes=("float32", "bfloat16", "float16"),
            default_dtype="bfloat16",
            block_sizes=(1, 2, 4, 8, 16, 32, 64, 128),
        )
