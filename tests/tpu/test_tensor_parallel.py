"""Tensor parallelism in the JAX family: a 2-device mesh (JAX's CPU device split in two by
XLA_FLAGS, in a subprocess since the flag must precede JAX's start), params and KV cache
sharded by heads / columns / vocabulary: greedy tokens equal one device, with the jnp
attention (partitioned by XLA) and the Pallas kernel (per shard under shard_map)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

SCRIPT = r"""
import json, sys
from quire import LLM, SamplingParams
models = json.loads(sys.argv[1])
params = SamplingParams(temperature=0, max_tokens=10, ignore_eos=True)
prompts = ["Hello world", "the scheduler serves paged attention blocks to every request", "a"]
kw = dict(backend="tpu", dtype="float32", block_size=16, num_blocks=32,
          max_num_batched_tokens=64, **json.loads(sys.argv[2]))
out = {}
for name, path in models.items():
    one = LLM(path, **kw).generate(prompts, params, use_tqdm=False)
    llm = LLM(path, tensor_parallel_size=2, **kw)
    two = llm.generate(prompts, params, use_tqdm=False)
    o_proj = llm.engine.executor.params["layers"][0]["o_proj.weight"]
    spec = str(getattr(o_proj, "qweight", o_proj).sharding.spec)
    out[name] = {"one": [o.outputs[0].token_ids for o in one],
                 "two": [o.outputs[0].token_ids for o in two], "spec": spec}
try:
    LLM(next(iter(models.values())), tensor_parallel_size=4, **kw)
except ValueError as exc:
    out["too_many"] = str(exc)
print("RESULT " + json.dumps(out))
"""


def _run(models: dict[str, str], attention: str, env_extra: dict | None = None, **kw) -> dict:
    env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=2",
           "QUIRE_TPU_ATTENTION": attention, **(env_extra or {})}
    proc = subprocess.run([sys.executable, "-c", SCRIPT, json.dumps(models), json.dumps(kw)],
                          env=env, capture_output=True, text=True, timeout=900)
    lines = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
    assert proc.returncode == 0 and lines, proc.stderr[-3000:]
    return json.loads(lines[0][len("RESULT "):])


@pytest.mark.parametrize("attention,archs", [
    ("reference", ["llama", "gemma2", "qwen3_moe"]),
    ("pallas-interpret", ["qwen3"]),
])
def test_two_device_mesh_greedy_equals_one_device(model_factory, attention, archs):
    out = _run({a: model_factory(a) for a in archs}, attention)
    for arch in archs:
        assert out[arch]["two"] == out[arch]["one"], arch
        assert "model" in out[arch]["spec"]  # o_proj rows really split over the mesh
    assert "needs 4 JAX devices" in out["too_many"]
    assert "xla_force_host_platform_device_count=4" in out["too_many"]


def test_int8_weights_split_like_dense(model_factory):
    """--quantization int8 with int8 activations (the MXU's int8 x int8 matmul) on the
    mesh: the int8 matrices split by columns / rows like dense ones, a row-parallel one's
    per-token scale taken over the whole row and its int32 partial sums reduced exactly;
    greedy tokens equal one device's."""
    out = _run({"llama": model_factory("llama")}, "reference",
               {"QUIRE_TPU_INT8_ACTIVATIONS": "1"}, quantization="int8")
    assert out["llama"]["two"] == out["llama"]["one"]
    assert "model" in out["llama"]["spec"]
