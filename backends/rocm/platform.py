"""AMD platform facts: the HIP probe and the tuning table keyed by gfx architecture. Only
HIP-visible torch APIs are used here (torch.version.hip, device properties' gcnArchName);
nothing CUDA-only (no compute capability, no NVML).

CDNA parts (MI200 gfx90a, MI300 gfx942, MI350 gfx950) run 64-lane wavefronts, so a Triton
"warp" there is 64 lanes: 4 warps is a 256-lane workgroup. waves_per_eu trades registers
for occupancy. gfx942 uses the fnuz fp8 formats (no negative zero, bias 8); gfx950 and
RDNA (wave32) parts use the OCP formats.
"""

from __future__ import annotations

import importlib.util
import logging
from dataclasses import dataclass

from quire.backends.triton.config import KernelConfig
from quire.plugins import Availability

logger = logging.getLogger(__name__)

REQUIRES = "the rocm backend needs an AMD GPU and a ROCm build of torch"

TUNING: dict[str, dict] = {
    "gfx90a": {"num_warps": 4, "num_stages": 1, "waves_per_eu": 2, "max_block_q": 16,
               "fp8_dtype": "float8_e4m3fnuz"},  # MI210/MI250: fp8 emulated, fnuz when used
    "gfx942": {"num_warps": 4, "num_stages": 2, "waves_per_eu": 2, "max_block_q": 32,
               "fp8_dtype": "float8_e4m3fnuz"},  # MI300X/MI325X
    "gfx950": {"num_warps": 4, "num_stages": 2, "waves_per_eu": 2, "max_block_q": 32,
               "fp8_dtype": "float8_e4m3fn"},  # MI350/MI355X: OCP fp8
    "gfx1100": {"num_warps": 4, "num_stages": 1, "waves_per_eu": 0, "max_block_q": 16,
                "fp8_dtype": "float8_e4m3fn"},  # RX 7900 / W7900 (wave32)
}
DEFAULT_ARCH = "gfx942"
PROGRAMS_PER_CU = 2


@dataclass(frozen=True, slots=True)
class RocmDevice:
    name: str
    arch: str  # e.g. "gfx942" (feature flags such as ":sramecc+:xnack-" stripped)
    num_cus: int


def probe() -> RocmDevice | None:
    """The first AMD GPU, or None (no torch, a CUDA build, or no device)."""
    if importlib.util.find_spec("torch") is None:
        return None
    import torch

    if torch.version.hip is None or not torch.cuda.is_available():
        return None
    props = torch.cuda.get_device_properties(0)
    arch = getattr(props, "gcnArchName", "").split(":")[0]
    return RocmDevice(props.name, arch, props.multi_processor_count)


def availability() -> Availability:
    if importlib.util.find_spec("triton") is None:
        return Availability(False, "triton is not installed (pip install 'quire[rocm]')")
    device = probe()
    if device is None:
        return Availability(False, "no AMD GPU visible to a ROCm (HIP) build of torch")
    return Availability(True, f"{device.name} ({device.arch})")


def kernel_config(device: RocmDevice) -> KernelConfig:
    entry = TUNING.get(device.arch)
    if entry is None:
        logger.warning("no tuning entry for %s; using %s's", device.arch or "this GPU",
                       DEFAULT_ARCH)
        entry = TUNING[DEFAULT_ARCH]
    return KernelConfig(target_programs=PROGRAMS_PER_CU * device.num_cus, **entry)


def fp8_dtype(cfg: KernelConfig):
    """The torch fp8 dtype of this platform (for fp8 KV caches and weights)."""
    import torch

    return getattr(torch, cfg.fp8_dtype)
