"""The hooks a quire plugin may implement. Each is optional."""

from __future__ import annotations

from collections.abc import Callable

from quire.plugins.spec import BackendSpec, hookspec


@hookspec
def quire_register_backends() -> list[BackendSpec]:
    """Return the backends this plugin provides (may be empty)."""


@hookspec(firstresult=True)
def quire_select_backend(specs: list[BackendSpec], requested: str | None) -> BackendSpec | None:
    """Override backend selection: return the spec to use, or None to leave it to quire.

    specs: every registered and available backend; requested: the name the user asked for,
    if any."""


@hookspec
def quire_register_models() -> dict[str, Callable]:
    """Return extra model architectures for the torch family: {architectures[0]: factory},
    where factory(arch_config, attention_cls, max_positions) builds an nn.Module with the
    interface of quire.backends.torch.models.llama.LlamaForCausalLM."""
