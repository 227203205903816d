"""The Ray tensor-parallel executor of the torch family (`--distributed-executor-backend
ray`; Ray is an optional extra, `quire[ray]`): ranks 1..N-1 are Ray actors placed by a
placement group (one bundle per rank, so a multi-node cluster spreads them), rank 0 runs
in the engine's process, as with the multi-process executor (multiproc.py), whose rank
setup it shares. Ray is joined where RAY_ADDRESS points, else started locally.

Every call goes to all ranks: one remote call per actor, the driver's own, then the
actors' results are collected (an actor that died fails the call naming its rank, and the
executor stops every actor).
"""

from __future__ import annotations

import atexit
import logging
import os
from typing import Any

from quire.backends.torch.multiproc import (
    TIMEOUT_S,
    RankedExecutor,
    free_port,
    join_group,
    leave_group,
)
from quire.core.config import EngineConfig
from quire.models.tensor_parallel import TPShard

logger = logging.getLogger(__name__)


class RankActor:
    """One tensor-parallel rank inside a Ray actor."""

    def __init__(self, executor_cls: type, args: tuple, shard: TPShard, init_method: str,
                 threads: int) -> None:
        self.executor = executor_cls(*args)
        self.setup = (shard, init_method, threads)

    def join(self) -> None:
        join_group(self.executor, *self.setup)

    def call(self, method: str, args: tuple) -> Any:
        result = getattr(self.executor, method)(*args)
        return None if method == "execute" else result

    def leave(self) -> None:
        leave_group(self.executor)


class RayExecutor(RankedExecutor):
    def __init__(self, executor_cls: type, config: EngineConfig, args: tuple,
                 world_size: int) -> None:
        try:
            import ray
            from ray.util.placement_group import placement_group, remove_placement_group
            from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy
        except ImportError as exc:
            raise ValueError("--distributed-executor-backend ray needs Ray: pip install "
                             "'quire[ray]' (or use the default, mp)") from exc
        super().__init__(executor_cls, config, world_size)
        self._ray, self._remove_pg = ray, remove_placement_group
        if not ray.is_initialized():
            ray.init(address=os.environ.get("RAY_ADDRESS"), log_to_driver=False,
                     include_dashboard=False)
        threads = max(1, (os.cpu_count() or 1) // world_size)
        self.pg = placement_group([{"CPU": 1}] * (world_size - 1))
        self.actors: list[Any] = []
        atexit.register(self.shutdown)
        try:
            ray.get(self.pg.ready(), timeout=TIMEOUT_S)
            init_method = f"tcp://{ray.util.get_node_ip_address()}:{free_port()}"
            actor_cls = ray.remote(num_cpus=1)(RankActor)
            self.actors = [actor_cls.options(scheduling_strategy=PlacementGroupSchedulingStrategy(
                self.pg, placement_group_bundle_index=i)).remote(
                    executor_cls, args, TPShard(i + 1, world_size), init_method, threads)
                for i in range(world_size - 1)]
            self.driver = executor_cls(*args)
            joins = [a.join.remote() for a in self.actors]
            join_group(self.driver, TPShard(0, world_size), init_method, threads)
            self._collect(joins)
        except BaseException:
            self.shutdown()
            raise

    def _collect(self, refs: list) -> list:
        try:
            return self._ray.get(refs, timeout=TIMEOUT_S)
        except self._ray.exceptions.RayActorError as exc:
            rank = next((i + 1 for i, r in enumerate(refs) if not _ok(self._ray, r)), "?")
            raise RuntimeError(f"tensor-parallel Ray actor rank {rank} died; the engine "
                               "cannot continue: restart it") from exc

    def _send(self, method: str, args: tuple) -> list:
        return [a.call.remote(method, args) for a in self.actors]

    def _receive(self, method: str, pending: list) -> None:
        self._collect(pending)

    def shutdown(self) -> None:
        if self.closed:
            return
        self.closed = True
        for actor in self.actors:
            self._ray.kill(actor)
        self.actors = []
        self._remove_pg(self.pg)
        driver = getattr(self, "driver", None)
        if driver is not None:
            leave_group(driver)
        atexit.unregister(self.shutdown)


def _ok(ray, ref) -> bool:
    try:
        ray.get(ref, timeout=0)
        return True
    except Exception:
        return False
