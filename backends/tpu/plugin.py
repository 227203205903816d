"""Registers the tpu backend. Without a TPU it still runs on JAX's CPU device, but only
when asked for by name (it is slow there, and says so)."""

from __future__ import annotations

import glob
import importlib.util
import os

from quire.plugins import PLUGIN_API_VERSION, Availability, BackendSpec, hookimpl


def tpu_present() -> bool:
    """A cheap probe (no jax import): TPU VMs expose /dev/accel* (v2-v5e) or /dev/vfio
    devices (v5p, v6e); TPU_NAME / TPU_ACCELERATOR_TYPE name a TPU in managed setups."""
    return bool(glob.glob("/dev/accel*") or glob.glob("/dev/vfio/[0-9]*")
                or os.environ.get("TPU_ACCELERATOR_TYPE") or os.environ.get("TPU_NAME"))


def _available() -> Availability:
    missing = [m for m in ("jax", "jaxlib", "ml_dtypes") if importlib.util.find_spec(m) is None]
    if missing:
        return Availability(False, f"{', '.join(missing)} not installed "
                                   "(pip install 'quire[tpu]')")
    if not tpu_present():
        return Availability(True, "no TPU found: runs on JAX's CPU device, only when asked "
                                  "for by name")
    return Availability(True)


@hookimpl
def quire_register_backends() -> list[BackendSpec]:
    return [BackendSpec(
        api_version=PLUGIN_API_VERSION,
        name="tpu",
        factory="quire.backends.tpu.executor:TpuExecutor",
        priority=30,
        is_available=_available,
        explicit_only=not tpu_present(),
        description="JAX with quire's Pallas paged attention on Google TPUs",
        ops="quire.backends.tpu.ops",
    )]
