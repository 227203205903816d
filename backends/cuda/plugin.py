"""Registers the cuda backend (NVIDIA GPUs, Triton attention, CUDA graphs)."""

from __future__ import annotations

from quire.plugins import PLUGIN_API_VERSION, BackendSpec, hookimpl


def _available():
    from quire.backends.cuda.platform import availability

    return availability()


@hookimpl
def quire_register_backends() -> list[BackendSpec]:
    return [BackendSpec(
        api_version=PLUGIN_API_VERSION,
        name="cuda",
        factory="quire.backends.cuda.executor:CudaExecutor",
        priority=50,
        is_available=_available,
        description="NVIDIA GPUs: quire's Triton paged attention, CUDA graphs",
        ops="quire.backends.triton.ops",
    )]
