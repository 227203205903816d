"""Registers triton-interpret: quire's Triton kernels on the CPU under TRITON_INTERPRET=1,
never chosen automatically. It lets the conformance kit and the end-to-end tests run the
GPU attention path on a machine without a GPU."""

from __future__ import annotations

import importlib.util

from quire.plugins import PLUGIN_API_VERSION, Availability, BackendSpec, hookimpl


def _available() -> Availability:
    from quire.backends.triton.config import interpreting

    missing = [m for m in ("torch", "triton") if importlib.util.find_spec(m) is None]
    if missing:
        return Availability(False, f"{', '.join(missing)} not installed "
                                   "(pip install 'quire[triton]')")
    if not interpreting():
        return Availability(False, "set TRITON_INTERPRET=1 to run the Triton kernels on "
                                   "the CPU (for testing; slow)")
    return Availability(True, "Triton kernels in the CPU interpreter (for testing; slow)")


@hookimpl
def quire_register_backends() -> list[BackendSpec]:
    return [BackendSpec(
        api_version=PLUGIN_API_VERSION,
        name="triton-interpret",
        factory="quire.backends.triton.executor:TritonInterpretExecutor",
        priority=0,
        is_available=_available,
        explicit_only=True,
        description="quire's Triton kernels on the CPU interpreter (testing)",
        ops="quire.backends.triton.ops",
    )]
