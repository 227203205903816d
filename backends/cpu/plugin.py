"""Registers the cpu backend through the same hook any third-party plugin uses."""

from __future__ import annotations

import importlib.util

from quire.plugins import PLUGIN_API_VERSION, Availability, BackendSpec, hookimpl


def _torch_installed() -> Availability:
    if importlib.util.find_spec("torch") is None:
        return Availability(False, "torch is not installed (pip install 'quire[cpu]')")
    return Availability(True)


@hookimpl
def quire_register_backends() -> list[BackendSpec]:
    return [BackendSpec(
        api_version=PLUGIN_API_VERSION,
        name="cpu",
        factory="quire.backends.cpu.executor:CpuExecutor",
        priority=10,
        is_available=_torch_installed,
        description="PyTorch on the host CPU; the reference backend",
        ops="quire.backends.cpu.ops",
    )]
