"""The cuda backend: the torch family on an NVIDIA GPU with quire's Triton attention."""

from __future__ import annotations

import torch

from quire.backends.cuda import platform
from quire.backends.triton.config import KernelConfig
from quire.backends.triton.executor import GpuExecutor


class CudaExecutor(GpuExecutor):
    device = torch.device("cuda")

    def kernel_config(self) -> KernelConfig:
        device = platform.probe()
        if device is None:
            raise ValueError("the cuda backend needs an NVIDIA GPU visible to torch")
        return platform.kernel_config(device)
