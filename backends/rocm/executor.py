"""The rocm backend: the torch family on an AMD GPU with quire's Triton attention. torch's
HIP build keeps the "cuda" device name; graphs are HIP graphs through the same API."""

from __future__ import annotations

import torch

from quire.backends.rocm import platform
from quire.backends.triton.executor import GpuExecutor


class RocmExecutor(GpuExecutor):
    device = torch.device("cuda")
    tp_communicator = "nccl"  # RCCL, under torch's nccl name on ROCm
    platform = platform
