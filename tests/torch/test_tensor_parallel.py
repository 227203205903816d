"""Tensor parallelism in the torch family (cpu backend, one process per rank, gloo):
greedy tokens equal one device for every architecture, KV heads replicated where ranks
outnumber them, clear refusals, and no worker left behind after a fault."""

from __future__ import annotations

import os
import signal

import pytest

from quire import LLM, SamplingParams

PROMPTS = ["Hello world", "the scheduler serves paged attention blocks to every request", "a"]
PARAMS = SamplingParams(temperature=0, max_tokens=10, ignore_eos=True)


def _greedy(llm: LLM) -> list[list[int]]:
    return [o.outputs[0].token_ids for o in llm.generate(PROMPTS, PARAMS, use_tqdm=False)]


def _engine(model_dir: str, tp: int, num_blocks: int = 64) -> LLM:
    return LLM(model_dir, dtype="float32", block_size=8, num_blocks=num_blocks,
               max_num_batched_tokens=32, tensor_parallel_size=tp)


@pytest.mark.parametrize("arch,tp,kwargs", [
    ("llama", 2, {}),  # GQA 4:2 -> one KV head per rank
    ("llama", 2, {"num_kv_heads": 1}),  # MQA: the KV head replicated
    ("llama", 4, {"num_heads": 8, "num_kv_heads": 2}),  # GQA 8:2 at TP=4: replicated
    ("qwen2", 2, {}),  # qkv bias split with the heads
    ("gemma2", 2, {}),  # tied embedding and head split by vocabulary, soft-caps, windows
    ("phi3", 2, {}),  # fused qkv / gate_up checkpoints
    ("mixtral", 2, {}),  # experts split by intermediate size
    ("qwen3_moe", 2, {}),  # dense and MoE layers
])
def test_tensor_parallel_greedy_equals_one_device(model_factory, arch, tp, kwargs):
    model_dir = model_factory(arch, **kwargs)
    ref = _greedy(_engine(model_dir, 1))
    # 4 usable blocks: requests get preempted. (Gemma 2's hybrid cache pages hold one
    # layer's block, 2 per whole-model block: 6 make 11 pages, which still preempt and
    # keep the shared prefix's pages of both groups until the second pass.)
    llm = _engine(model_dir, tp, num_blocks=6 if arch == "gemma2" else 5)
    try:
        assert llm.engine.model_info.vocab_size == _engine(model_dir, 1).engine \
            .model_info.vocab_size
        assert _greedy(llm) == ref
        assert _greedy(llm) == ref  # again: prompts now hit the prefix cache
        stats = llm.engine.stats()
        assert stats.num_preemptions > 0 and stats.prefix_cache_hits > 0, stats
        assert stats.num_used_blocks == 0
    finally:
        llm.engine.shutdown()
    assert all(p.poll() is not None for p in llm.engine.executor.procs) and \
        not llm.engine.executor.procs
    assert not _segments(), "a shared-memory segment was left behind"


def _segments() -> list[str]:
    return [f for f in os.listdir("/dev/shm") if f.startswith(("quire-tp", "quire-calls"))] \
        if os.path.isdir("/dev/shm") else []


def test_calls_through_the_sockets_give_the_same_tokens(model_factory, monkeypatch):
    """QUIRE_TP_SHM=0: no shared memory at all (calls pickled down each worker's socket,
    collectives through gloo); and a call too large for the shared-memory inbox takes the
    socket in order with the others."""
    import quire.core.shm_broadcast as shm_broadcast

    model_dir = model_factory("llama")
    ref = _greedy(_engine(model_dir, 1))
    monkeypatch.setenv("QUIRE_TP_SHM", "0")
    llm = _engine(model_dir, 2)
    try:
        assert llm.engine.executor.outbox is None
        assert _greedy(llm) == ref
    finally:
        llm.engine.shutdown()
    monkeypatch.delenv("QUIRE_TP_SHM")
    monkeypatch.setattr(shm_broadcast, "PAYLOAD_BYTES", 600)  # most batches do not fit
    llm = _engine(model_dir, 2)
    try:
        assert _greedy(llm) == ref
    finally:
        llm.engine.shutdown()
    assert not _segments()


def test_sizes_that_do_not_divide_are_refused(model_factory):
    with pytest.raises(ValueError, match="tensor_parallel_size 3 does not divide"):
        _engine(model_factory("llama"), 3)


def test_backend_without_tensor_parallelism_refuses():
    from quire.core.config import EngineConfig
    from tests.core.fakes import CountingExecutor

    config = EngineConfig(tensor_parallel_size=2)
    with pytest.raises(ValueError, match="does not run tensor parallelism"):
        CountingExecutor.tensor_parallel(config, (config,))


def test_jax_family_without_enough_devices_says_how(model_factory):
    with pytest.raises(ValueError, match="xla_force_host_platform_device_count=2"):
        LLM(model_factory("llama"), backend="tpu", dtype="float32", block_size=16,
            num_blocks=16, tensor_parallel_size=2)


def test_killed_worker_fails_the_call_and_leaves_nothing(model_factory):
    llm = _engine(model_factory("llama"), 2)
    executor = llm.engine.executor
    procs = list(executor.procs)
    assert _greedy(llm)
    os.kill(procs[0].pid, signal.SIGKILL)
    procs[0].wait(timeout=10)
    # the step fails with an error naming the dead rank, never a hang
    with pytest.raises(RuntimeError, match="worker rank 1 died"):
        llm.generate(PROMPTS, PARAMS, use_tqdm=False)
    assert all(p.poll() is not None for p in procs)
    with pytest.raises(RuntimeError, match="shut down"):
        executor.execute(None)
    assert not _segments()


@pytest.fixture(scope="session")
def ray_cluster():
    """One local Ray cluster (2 CPUs) for the whole session."""
    ray = pytest.importorskip("ray", reason="Ray is an optional extra (quire[ray])")
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield ray
    ray.shutdown()


@pytest.mark.parametrize("arch,kwargs", [("llama", {"num_kv_heads": 1}), ("qwen3_moe", {})])
def test_ray_actors_greedy_equals_one_device(model_factory, ray_cluster, arch, kwargs):
    model_dir = model_factory(arch, **kwargs)
    ref = _greedy(_engine(model_dir, 1))
    llm = LLM(model_dir, dtype="float32", block_size=8, num_blocks=64,
              max_num_batched_tokens=32, tensor_parallel_size=2,
              distributed_executor_backend="ray")
    executor = llm.engine.executor
    try:
        assert type(executor).__name__ == "RayExecutor" and len(executor.actors) == 1
        assert _greedy(llm) == ref
    finally:
        llm.engine.shutdown()
    assert executor.closed and not executor.actors
