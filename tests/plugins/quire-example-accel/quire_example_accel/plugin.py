"""Registers the "example" backend through quire's public hooks only."""

from __future__ import annotations

from quire.plugins import PLUGIN_API_VERSION, BackendSpec, hookimpl


@hookimpl
def quire_register_backends() -> list[BackendSpec]:
    return [BackendSpec(
        api_version=PLUGIN_API_VERSION,
        name="example",
        factory="quire_example_accel.executor:ExampleExecutor",
        priority=1,  # never preferred over the built-in cpu backend automatically
        description="example plugin: head-major KV layout on the CPU",
        ops="quire_example_accel.ops",
    )]
