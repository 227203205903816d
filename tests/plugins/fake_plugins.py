"""Plugin objects for plugin-manager tests, loaded through fake entry points."""

from __future__ import annotations

from quire.backends.torch.models.llama import LlamaForCausalLM
from quire.backends.torch.quantization import PackedLinearMethod
from quire.plugins import PLUGIN_API_VERSION as V
from quire.plugins import Availability, BackendSpec, hookimpl


class Good:
    @hookimpl
    def quire_register_backends(self):
        return [
            BackendSpec("fast", "quire.backends.cpu.executor:CpuExecutor", priority=50,
                        api_version=V),
            BackendSpec("gpu_only", "nowhere:Nothing", priority=100, api_version=V,
                        is_available=lambda: Availability(False, "torch has no CUDA device")),
            BackendSpec("tpu_cpu", "quire.backends.cpu.executor:CpuExecutor", priority=200,
                        explicit_only=True, api_version=V),
        ]


class Broken:
    @hookimpl
    def quire_register_backends(self):
        raise RuntimeError("driver exploded")


class ClaimsCpu:
    @hookimpl
    def quire_register_backends(self):
        return [BackendSpec("cpu", "x:Y", api_version=V)]


class OldApi:
    @hookimpl
    def quire_register_backends(self):
        return [BackendSpec("old", "quire.backends.cpu.executor:CpuExecutor", priority=99,
                            api_version="0.3")]


class Unversioned:
    @hookimpl
    def quire_register_backends(self):
        return [BackendSpec("unversioned", "quire.backends.cpu.executor:CpuExecutor")]


class ExplodesOnImport:
    @hookimpl
    def quire_register_backends(self):
        return [BackendSpec("explodes", "tests.plugins.explodes_on_import:Executor",
                            priority=1000, api_version=V)]


class Chooser:
    @hookimpl
    def quire_select_backend(self, specs, requested):
        return next((s for s in specs if s.name == "cpu"), None)


class Models:
    @hookimpl
    def quire_register_models(self):
        return {"MyLlamaForCausalLM": LlamaForCausalLM}


class CountingMethod(PackedLinearMethod):
    """A plugin's quantization method: the built-in packed one, counting its calls."""

    name = "counting"
    calls = 0

    def apply(self, layer, x):
        CountingMethod.calls += 1
        return super().apply(layer, x)


class Quantization:
    @hookimpl
    def quire_register_quantization(self):
        return {"counting": CountingMethod}


good, broken, claims_cpu, old_api, chooser, models = (
    Good(), Broken(), ClaimsCpu(), OldApi(), Chooser(), Models())
quantization = Quantization()
unversioned, explodes_on_import = Unversioned(), ExplodesOnImport()
