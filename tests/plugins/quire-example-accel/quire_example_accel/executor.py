from __future__ import annotations

from quire.backends.torch.executor import TorchExecutor
from quire.core.executor import Capabilities
from quire_example_accel.attention import HeadMajorAttention


class ExampleExecutor(TorchExecutor):
    attention_cls = HeadMajorAttention

    @classmethod
    def capabilities(cls) -> Capabilities:
        return Capabilities(dtypes=("float32",), default_dtype="float32",
                            block_sizes=(4, 8, 16, 32))
