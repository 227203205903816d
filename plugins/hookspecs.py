"""The hooks a quire plugin may implement. Each is optional.

Implement them as functions marked ``@quire.plugins.hookimpl`` in a module exposed through
the ``quire`` entry-point group. quire calls each hook once per plugin, built-in plugins
first; a plugin whose hook raises is reported and skipped, never fatal to the others.
"""

from __future__ import annotations

from collections.abc import Callable

from quire.plugins.spec import BackendSpec, hookspec


@hookspec
def quire_register_backends() -> list[BackendSpec]:
    """Return the backends this plugin provides (may be empty).

    Called by every backend listing and selection (`quire backends`, `LLM(...)`,
    `quire serve`). Keep it cheap: import nothing heavy here; put probes in
    ``BackendSpec.is_available`` and the executor behind ``BackendSpec.factory``. Two plugins
    registering one name is an error naming both.
    """


@hookspec(firstresult=True)
def quire_select_backend(specs: list[BackendSpec], requested: str | None) -> BackendSpec | None:
    """Override backend selection: return the spec to use, or None to leave it to quire.

    First result wins: the first plugin returning a spec decides and later plugins are not
    asked. specs: every registered and available backend; requested: the name the user
    asked for (backend= / --backend / QUIRE_BACKEND), if any. Honoured by every family.
    """


@hookspec
def quire_register_models() -> dict[str, Callable]:
    """Return extra model architectures: {config.json architectures[0]: factory}.

    Honoured by the torch family (cpu, cuda, rocm, triton-interpret and torch-based plugins):
    factory(arch_config, attention_cls, max_positions) builds an nn.Module with the interface
    of quire.backends.torch.models.llama.LlamaForCausalLM (forward, compute_logits,
    load_weights). The tpu (JAX) family refuses such a model with a message saying so. Later
    plugins override earlier ones for the same name.
    """


@hookspec
def quire_register_quantization() -> dict[str, Callable]:
    """Return extra weight quantization methods: {name: factory}.

    Honoured by the torch family: factory(kernel) returns a
    quire.backends.torch.quantization.LinearMethod (create_weights -> load_weights ->
    process_after_loading -> apply), kernel being the backend's QuantKernel (or None). A
    method is picked by name with --quantization / LLM(quantization=NAME). The tpu (JAX)
    family refuses a plugin method with a message. Later plugins override earlier ones.
    Added in plugin API 1.2.
    """
