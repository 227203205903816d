from __future__ import annotations

import json
import os
import subprocess
import sys
from importlib.metadata import EntryPoint

import pytest

from quire.plugins.manager import BUILTIN_PLUGINS, load_plugins
from quire.plugins.selection import describe, select_backend


def eps(*names: str) -> list[EntryPoint]:
    return [EntryPoint(n, f"tests.plugins.fake_plugins:{n}", "quire") for n in names]


def test_builtin_backends_register_through_the_hook():
    plugins = load_plugins(env={}, entry_points=[])
    table = {s.spec.name: s for s in plugins.backends()}
    assert sorted(table) == ["cpu", "cuda", "rocm", "tpu", "triton-interpret"]
    assert all(s.package == "quire" for s in table.values())
    cpu = table["cpu"]
    assert cpu.availability
    assert select_backend(plugins, None, env={}).spec.name == "cpu"


def test_explicit_beats_env_beats_automatic():
    plugins = load_plugins(env={}, entry_points=eps("good"))
    assert select_backend(plugins, None, env={}).spec.name == "fast"  # highest available
    assert select_backend(plugins, None, env={"QUIRE_BACKEND": "cpu"}).spec.name == "cpu"
    assert select_backend(plugins, "fast", env={"QUIRE_BACKEND": "cpu"}).spec.name == "fast"
    # explicit_only backends are never automatic but can be asked for
    assert select_backend(plugins, "tpu_cpu", env={}).spec.name == "tpu_cpu"


def test_unknown_and_unavailable_names_explain():
    plugins = load_plugins(env={}, entry_points=eps("good"))
    with pytest.raises(ValueError) as err:
        select_backend(plugins, "nope", env={})
    msg = str(err.value)
    assert "unknown backend 'nope'" in msg and "gpu_only" in msg and "cpu" in msg
    with pytest.raises(ValueError, match="torch has no CUDA device"):
        select_backend(plugins, "gpu_only", env={})


def test_broken_plugin_reported_and_skipped():
    plugins = load_plugins(env={}, entry_points=eps("broken", "good") + [
        EntryPoint("missing", "no_such_module_xyz", "quire")])
    names = [s.spec.name for s in plugins.backends() if s.plugin not in BUILTIN_PLUGINS[1:]]
    assert names == ["tpu_cpu", "gpu_only", "fast", "cpu"]
    errors = {e.plugin: e.error for e in plugins.errors}
    assert "driver exploded" in errors["broken"]
    assert "ModuleNotFoundError" in errors["missing"]
    assert "plugin 'broken' was skipped" in describe(plugins)


def test_duplicate_backend_name_is_an_error_naming_both():
    plugins = load_plugins(env={}, entry_points=eps("claims_cpu"))
    with pytest.raises(ValueError, match="'cpu' is registered by both"):
        plugins.backends()


def test_other_major_api_version_refused():
    plugins = load_plugins(env={}, entry_points=eps("old_api"))
    status = {s.spec.name: s for s in plugins.backends()}["old"]
    assert not status.availability and "plugin API 0.3" in status.availability.reason
    assert select_backend(plugins, None, env={}).spec.name == "cpu"


def test_quire_plugins_env_limits_loading():
    plugins = load_plugins(env={"QUIRE_PLUGINS": "chooser"}, entry_points=eps("good", "chooser"))
    names = [s.spec.name for s in plugins.backends()]  # built-ins only: "good" not loaded
    assert sorted(names) == ["cpu", "cuda", "rocm", "tpu", "triton-interpret"]


def test_select_hook_overrides():
    plugins = load_plugins(env={}, entry_points=eps("good", "chooser"))
    assert select_backend(plugins, None, env={}).spec.name == "cpu"


def test_models_hook_registers_an_architecture(llama_dir, copy_model):
    from quire import EngineConfig
    from quire.engine_factory import create_engine

    path = copy_model(llama_dir)
    with open(os.path.join(path, "config.json")) as f:
        cfg = json.load(f)
    cfg["architectures"] = ["MyLlamaForCausalLM"]
    with open(os.path.join(path, "config.json"), "w") as f:
        json.dump(cfg, f)
    plugins = load_plugins(env={}, entry_points=eps("models"))
    engine = create_engine(EngineConfig(model=path, num_blocks=16), plugins)
    assert engine.model_info.architecture == "MyLlamaForCausalLM"


def test_plugin_quantization_method_is_chosen_by_name():
    """quire_register_quantization (plugin API 1.2): --quantization NAME picks the plugin's
    method for the bundled GGUF's packed weights; an unknown name lists the methods."""
    from quire.core.config import EngineConfig
    from quire.engine_factory import create_engine
    from tests.plugins.fake_plugins import CountingMethod

    plugins = load_plugins(env={}, entry_points=eps("quantization"))
    assert "counting" in plugins.quantization_methods()
    engine = create_engine(EngineConfig(quantization="counting", num_blocks=16), plugins)
    from quire import SamplingParams

    engine.add_request("Hello", SamplingParams(max_tokens=2))
    while engine.has_unfinished_requests():
        engine.step()
    assert CountingMethod.calls > 0
    with pytest.raises(ValueError, match="unknown quantization method 'nope'.*counting"):
        create_engine(EngineConfig(quantization="nope", num_blocks=16), plugins)


def test_installed_example_plugin_end_to_end(llama_dir):
    """The example package is pip-installed by the test setup; select it by flag and env."""
    from quire import LLM, SamplingParams

    table = {s.spec.name: s for s in load_plugins(env={}).backends()}
    assert table["example"].package == "quire-example-accel"
    params = SamplingParams(temperature=0, max_tokens=10, ignore_eos=True)
    prompts = ["Hello world", "the scheduler serves paged attention"]
    cpu = LLM(llama_dir, backend="cpu", dtype="float32", num_blocks=32, block_size=8)
    ex = LLM(llama_dir, backend="example", dtype="float32", num_blocks=32, block_size=8)
    assert ex.engine.backend_name == "example"
    assert ex.engine.executor.kv_caches[0].shape[1] == 2  # head-major: [2, Hkv, N, S, D]
    a = [o.outputs[0].token_ids for o in cpu.generate(prompts, params, use_tqdm=False)]
    b = [o.outputs[0].token_ids for o in ex.generate(prompts, params, use_tqdm=False)]
    assert a == b


def test_cli_backends_and_env_selection(llama_dir):
    env = {**os.environ, "QUIRE_BACKEND": "example"}
    out = subprocess.run([sys.executable, "-m", "quire.cli", "backends"], env=env,
                         capture_output=True, text=True, check=True).stdout
    assert "quire-example-accel" in out and "selected: example" in out
    res = subprocess.run([sys.executable, "-m", "quire.cli", "generate", "--model", llama_dir,
                          "--backend", "nope", "--prompt", "x"], capture_output=True, text=True)
    assert res.returncode == 2 and "unknown backend 'nope'" in res.stderr


def test_spec_without_api_version_is_unavailable_with_the_fix():
    plugins = load_plugins(env={}, entry_points=eps("unversioned"))
    status = {s.spec.name: s for s in plugins.backends()}["unversioned"]
    assert not status.availability
    assert "api_version=quire.plugins.PLUGIN_API_VERSION" in status.availability.reason


def test_executor_module_that_raises_on_import_is_one_clear_error():
    from quire.plugins.selection import load_factory

    plugins = load_plugins(env={}, entry_points=eps("explodes_on_import"))
    status = select_backend(plugins, "explodes", env={})
    with pytest.raises(ValueError) as err:
        load_factory(status)
    msg = str(err.value)
    assert "'explodes'" in msg and "explodes_on_import" in msg
    assert "RuntimeError: vendor runtime not initialised" in msg


def test_quire_plugins_filters_by_entry_point_or_distribution_name():
    plugins = load_plugins(env={"QUIRE_PLUGINS": "good"}, entry_points=eps("good", "broken"))
    assert not plugins.errors  # "broken" was never loaded
    assert "fast" in {s.spec.name for s in plugins.backends()}


def test_cli_backends_exit_codes(capsys):
    from quire.cli import main

    assert main(["backends", "--backend", "cpu", "--check"]) == 0
    assert "check passed" in capsys.readouterr().out
    assert main(["backends", "--backend", "no-such-backend"]) == 1
    assert "no selection: unknown backend 'no-such-backend'" in capsys.readouterr().out
