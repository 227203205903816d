"""NVIDIA platform facts: the availability probe and the tuning table keyed by compute
capability. Probing imports torch but never initialises CUDA beyond device queries."""

from __future__ import annotations

import importlib.util
import logging
from dataclasses import dataclass

from quire.backends.triton.config import KernelConfig
from quire.plugins import Availability

logger = logging.getLogger(__name__)

REQUIRES = "the cuda backend needs an NVIDIA GPU visible to torch"

# (major, minor) -> launch options. Tiles are what the unified kernel needs per program;
# stages pipeline the page loads (more shared memory on newer parts allows more).
TUNING: dict[tuple[int, int], dict] = {
    (7, 0): {"num_warps": 4, "num_stages": 2, "max_block_q": 16},  # V100
    (7, 5): {"num_warps": 4, "num_stages": 2, "max_block_q": 16},  # T4
    (8, 0): {"num_warps": 4, "num_stages": 3, "max_block_q": 32},  # A100
    (8, 6): {"num_warps": 4, "num_stages": 2, "max_block_q": 16},  # A10, RTX 30
    (8, 9): {"num_warps": 4, "num_stages": 2, "max_block_q": 16},  # L4, L40, RTX 40
    (9, 0): {"num_warps": 4, "num_stages": 3, "max_block_q": 32},  # H100, H200
    (10, 0): {"num_warps": 4, "num_stages": 3, "max_block_q": 32},  # B200
}
PROGRAMS_PER_SM = 2


@dataclass(frozen=True, slots=True)
class CudaDevice:
    name: str
    capability: tuple[int, int]
    num_sms: int


def probe() -> CudaDevice | None:
    """The first CUDA device, or None (no torch, no device, or a HIP build of torch)."""
    if importlib.util.find_spec("torch") is None:
        return None
    import torch

    if torch.version.hip is not None or not torch.cuda.is_available():
        return None
    props = torch.cuda.get_device_properties(0)
    return CudaDevice(props.name, (props.major, props.minor), props.multi_processor_count)


def availability() -> Availability:
    if importlib.util.find_spec("triton") is None:
        return Availability(False, "triton is not installed (pip install 'quire[cuda]')")
    device = probe()
    if device is None:
        return Availability(False, "no NVIDIA GPU visible to torch (or a ROCm build)")
    if device.capability < (7, 0):
        return Availability(False, f"{device.name} (sm_{device.capability[0]}"
                                   f"{device.capability[1]}) is older than Volta")
    return Availability(True, device.name)


def kernel_config(device: CudaDevice) -> KernelConfig:
    """The table entry for this capability (the nearest lower one when not listed)."""
    known = [cc for cc in TUNING if cc <= device.capability]
    if device.capability not in TUNING:
        logger.info("no tuning entry for sm_%d%d; using the nearest older one",
                    *device.capability)
    entry = TUNING[max(known)] if known else TUNING[(7, 0)]
    return KernelConfig(target_programs=PROGRAMS_PER_SM * device.num_sms,
                        fp8_dtype="float8_e4m3fn", **entry)
