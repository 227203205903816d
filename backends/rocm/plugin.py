"""Registers the rocm backend (AMD GPUs, Triton attention tuned for wavefront 64)."""

from __future__ import annotations

from quire.plugins import PLUGIN_API_VERSION, BackendSpec, hookimpl


def _available():
    from quire.backends.rocm.platform import availability

    return availability()


@hookimpl
def quire_register_backends() -> list[BackendSpec]:
    return [BackendSpec(
        api_version=PLUGIN_API_VERSION,
        name="rocm",
        factory="quire.backends.rocm.executor:RocmExecutor",
        priority=50,
        is_available=_available,
        description="AMD GPUs: quire's Triton paged attention, HIP graphs",
        ops="quire.backends.triton.ops",
    )]
