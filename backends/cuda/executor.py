"""The cuda backend: the torch family on an NVIDIA GPU with quire's Triton attention."""

from __future__ import annotations

import torch

from quire.backends.cuda import platform
from quire.backends.triton.executor import GpuExecutor


class CudaExecutor(GpuExecutor):
    device = torch.device("cuda")
    tp_communicator = "nccl"  # tensor-parallel ranks meet through NCCL
    platform = platform
