"""The multi-process tensor-parallel executor of the torch family, behind the ordinary
Executor contract: the core still hands one Batch per step to one executor.

Rank 0 runs in the engine's process (the driver); ranks 1..N-1 are worker processes on this
host (fresh interpreters running this module, so nothing is inherited and the user's
script is never re-imported), each holding its slice of the model and of the KV cache (its
KV heads). They talk over an authenticated local socket, and every call (each step's Batch)
is written once into a shared-memory segment all workers read (core/shm_broadcast.py;
QUIRE_TP_SHM=0 sends it down the sockets instead). Every call goes to all ranks: the
driver sends it to the workers, then runs it itself; the ranks meet in the model's
collectives (torch.distributed, gloo on CPU) and only rank 0 returns the sampled tokens.
Each rank gets its share of the host's cores, so ranks do not fight for them.

Faults: a worker that dies or stops answering fails the call with an error naming the
rank (never a hang: the collectives time out too), and shutdown() — also run at exit —
stops every worker.
"""

from __future__ import annotations

import atexit
import datetime
import logging
import os
import secrets
import socket
import subprocess
import traceback
from multiprocessing.connection import Connection
from typing import Any

from quire.core.batch import Batch
from quire.core.config import EngineConfig
from quire.core.executor import Capabilities, Executor, ModelInfo, ModelOutput
from quire.core.process_link import spawn, stop
from quire.core.shm_broadcast import Broadcast, wait_for
from quire.models.tensor_parallel import TPShard

logger = logging.getLogger(__name__)

# Seconds a rank waits in a collective or for a worker's answer before failing the call.
TIMEOUT_S = float(os.environ.get("QUIRE_TP_TIMEOUT_S", "120"))


def serve_rank(conn: Connection) -> None:
    """A worker process (quire.core.process_link): receive its rank's setup, then serve."""
    _worker(*conn.recv(), conn)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("", 0))
        return s.getsockname()[1]


def join_group(executor: Any, shard: TPShard, init_method: str, threads: int,
               shm_name: str | None = None, peers_alive: Any = None) -> None:
    """Make executor rank shard.rank of a tensor-parallel group (before load_model); with
    shm_name, CPU ranks exchange tensors through that shared-memory segment."""
    import torch
    import torch.distributed as dist

    from quire.backends.torch.parallel import Communicator

    executor.threads_before_tp = torch.get_num_threads()
    torch.set_num_threads(threads)
    if executor.device.type == "cpu" and hasattr(os, "sched_setaffinity") \
            and os.environ.get("QUIRE_TP_PIN", "1") != "0":
        # Each rank on its own cores (its share of what this process may use), so ranks
        # do not fight for them; restored when the rank leaves.
        cores = sorted(os.sched_getaffinity(0))
        mine = cores[shard.rank * threads : (shard.rank + 1) * threads]
        if len(cores) >= shard.size * threads and mine:
            executor.affinity_before_tp = set(cores)
            os.sched_setaffinity(0, mine)
    if executor.device.type != "cpu":  # one device per rank
        getattr(torch, executor.device.type).set_device(shard.rank)
        executor.device = torch.device(executor.device.type, shard.rank)
        executor.workspace = type(executor.workspace)(executor.device)
    dist.init_process_group(executor.tp_communicator, init_method=init_method,
                            rank=shard.rank, world_size=shard.size,
                            timeout=datetime.timedelta(seconds=TIMEOUT_S))
    executor.tp = shard
    if shm_name is not None and executor.device.type == "cpu":
        from quire.backends.torch.shm_comm import ShmCommunicator

        if peers_alive is None:  # a worker: its peer that matters is the driver, its parent
            parent = os.getppid()

            def peers_alive() -> bool:
                return os.getppid() == parent
        executor.comm = ShmCommunicator(shard.rank, shard.size, shm_name, TIMEOUT_S,
                                        peers_alive)
    else:
        executor.comm = Communicator(shard.rank, shard.size)


def _next_call(conn: Connection, inbox: Broadcast | None) -> tuple[str, tuple]:
    """The driver's next call: from the shared-memory inbox, or the socket (a call too large
    for the inbox, a shutdown, or no inbox). EOFError when the driver is gone."""
    if inbox is None:
        return conn.recv()
    parent = os.getppid()

    def idle() -> bool:  # asked while waiting: stop to read the socket, or the driver died
        return conn.poll() or os.getppid() != parent

    while True:
        wait_for(inbox.poll, idle)
        if inbox.poll():
            in_memory, message = inbox.take()
            return message if in_memory else conn.recv()
        if conn.poll():
            return conn.recv()
        raise EOFError("the driver is gone")


def _worker(executor_cls: type, args: tuple, shard: TPShard, init_method: str, threads: int,
            shm_name: str | None, inbox_name: str | None, conn: Connection) -> None:
    """A worker rank: build the executor, join the group, then serve calls until told to
    stop (or the driver goes away)."""
    inbox = None
    try:
        executor = executor_cls(*args)
        if inbox_name is not None:
            inbox = Broadcast(inbox_name, shard.size - 1, reader=shard.rank - 1)
        conn.send(("ok", None))  # built: the driver may now open the group
        join_group(executor, shard, init_method, threads, shm_name)
    except BaseException:  # report why this rank could not start, then exit
        conn.send(("error", traceback.format_exc()))
        return
    while True:
        try:
            method, call_args = _next_call(conn, inbox)
        except (EOFError, OSError):  # the driver is gone
            break
        if method == "shutdown":
            break
        try:
            result = getattr(executor, method)(*call_args)
            # Workers answer every call but execute (rank 0 alone returns its output).
            if method != "execute":
                conn.send(("ok", result))
        except BaseException:
            conn.send(("error", traceback.format_exc()))
    leave_group(executor)
    if inbox is not None:
        inbox.close()


def leave_group(executor: Any) -> None:
    """Undo join_group: the executor shut down, the group left, the thread count back."""
    import torch
    import torch.distributed as dist

    executor.shutdown()
    close = getattr(executor.comm, "close", None)
    if close is not None:
        close()
    if dist.is_initialized():
        dist.destroy_process_group()
    torch.set_num_threads(getattr(executor, "threads_before_tp", torch.get_num_threads()))
    if getattr(executor, "affinity_before_tp", None):
        os.sched_setaffinity(0, executor.affinity_before_tp)
        executor.affinity_before_tp = None


class RankedExecutor(Executor):
    """Rank 0 of a tensor-parallel model in this process (self.driver, an executor_cls)
    and ranks 1..N-1 elsewhere; subclasses say how a call reaches them (_send) and how
    their results come back (_receive). Every Executor call runs on all ranks; a failure
    on any leaves them out of step, so it stops them all (the engine cannot go on)."""

    def __init__(self, executor_cls: type, config: EngineConfig, world_size: int) -> None:
        super().__init__(config)
        self.executor_cls, self.world_size, self.closed = executor_cls, world_size, False

    def capabilities(self) -> Capabilities:  # type: ignore[override]
        """The rank executor's (an instance method here: the class wraps any of them)."""
        return self.executor_cls.capabilities()

    def _send(self, method: str, args: tuple) -> Any:
        raise NotImplementedError

    def _receive(self, method: str, pending: Any) -> None:
        raise NotImplementedError

    def _call(self, method: str, *args: Any) -> Any:
        if self.closed:
            raise RuntimeError("the tensor-parallel executor has shut down (after a failure "
                               "or shutdown()); start a new engine")
        try:
            pending = self._send(method, args)
            result = getattr(self.driver, method)(*args)
            self._receive(method, pending)
            return result
        except BaseException:
            self.shutdown()
            raise

    # -- the Executor contract ---------------------------------------------------------------
    def load_model(self, model_path: str, dtype: str) -> ModelInfo:
        self.info = self._call("load_model", model_path, dtype)
        return self.info

    def kv_cache_bytes_per_block(self, block_size: int) -> int:
        return self.driver.kv_cache_bytes_per_block(block_size)

    def profile_num_blocks(self, block_size: int, memory_bytes: int) -> int:
        return self.driver.profile_num_blocks(block_size, memory_bytes)

    def allocate_kv_cache(self, num_blocks: int, block_size: int,
                          kv_groups: tuple = ()) -> None:
        self._call("allocate_kv_cache", num_blocks, block_size, kv_groups)

    def execute(self, batch: Batch) -> ModelOutput:
        return self._call("execute", batch)


class MultiprocExecutor(RankedExecutor):
    """N ranks of executor_cls (a TorchExecutor subclass), this process being rank 0."""

    def __init__(self, executor_cls: type, config: EngineConfig, args: tuple,
                 world_size: int) -> None:
        super().__init__(executor_cls, config, world_size)
        init_method = f"tcp://127.0.0.1:{free_port()}"
        threads = max(1, (os.cpu_count() or 1) // world_size)
        self.procs: list[subprocess.Popen] = []
        self.conns: list[Connection] = []
        self.segment = None  # the CPU ranks' shared memory (shm_comm.py)
        self.outbox: Broadcast | None = None  # the calls, written once for every worker
        shm_name = inbox_name = None
        atexit.register(self.shutdown)
        try:
            use_shm = os.environ.get("QUIRE_TP_SHM", "1") != "0"
            if executor_cls.device.type == "cpu" and use_shm:
                from quire.backends.torch.shm_comm import create_segment

                shm_name = f"quire-tp-{os.getpid()}-{secrets.token_hex(4)}"
                self.segment = create_segment(shm_name, world_size)
            if use_shm:
                self.outbox = Broadcast(f"quire-calls-{os.getpid()}-{secrets.token_hex(4)}",
                                        world_size - 1)
                inbox_name = self.outbox.name
            for rank in range(1, world_size):
                proc, conn = spawn("quire.backends.torch.multiproc:serve_rank", TIMEOUT_S)
                self.procs.append(proc)
                self.conns.append(conn)
                conn.send((executor_cls, args, TPShard(rank, world_size), init_method,
                           threads, shm_name, inbox_name))
        except BaseException:
            self.shutdown()
            raise
        self.driver = executor_cls(*args)
        try:
            self._answers()  # every worker built its executor
            join_group(self.driver, TPShard(0, world_size), init_method, threads, shm_name,
                       lambda: all(p.poll() is None for p in self.procs))
        except BaseException:
            self.shutdown()
            raise

    # -- calls on every rank ----------------------------------------------------------------
    def _send(self, method: str, args: tuple) -> None:
        self._check_alive()
        if self.outbox is not None and self.outbox.publish(
                (method, args), TIMEOUT_S, lambda: all(p.poll() is None for p in self.procs)):
            return
        for conn in self.conns:  # no outbox, or the call is too large for it
            conn.send((method, args))

    def _receive(self, method: str, pending: None) -> None:
        if method != "execute":  # workers answer every call but execute
            self._answers()

    def _answers(self) -> list[Any]:
        results = []
        for rank, conn in enumerate(self.conns, start=1):
            if not conn.poll(TIMEOUT_S):
                raise RuntimeError(f"tensor-parallel rank {rank} did not answer in "
                                   f"{TIMEOUT_S:.0f} s")
            try:
                status, value = conn.recv()
            except (EOFError, OSError) as exc:
                raise RuntimeError(self._death_message(rank)) from exc
            if status == "error":
                raise RuntimeError(f"tensor-parallel rank {rank} failed:\n{value}")
            results.append(value)
        return results

    def _check_alive(self) -> None:
        for rank, proc in enumerate(self.procs, start=1):
            if proc.poll() is not None:
                raise RuntimeError(self._death_message(rank))

    def _death_message(self, rank: int) -> str:
        code = self.procs[rank - 1].poll()
        return (f"tensor-parallel worker rank {rank} died (exit code {code}); the engine "
                "cannot continue: restart it")

    def execute(self, batch: Batch) -> ModelOutput:
        procs = list(self.procs)
        try:
            return super().execute(batch)
        except RuntimeError as exc:  # a collective failed: say which rank is gone, if one is
            dead = [r for r, p in enumerate(procs, start=1)
                    if p.returncode not in (None, 0)]
            if dead:
                raise RuntimeError(f"tensor-parallel worker rank {dead[0]} died (exit code "
                                   f"{procs[dead[0] - 1].returncode}); the engine cannot "
                                   "continue: restart it") from exc
            raise

    def shutdown(self) -> None:
        self.closed = True
        for proc, conn in zip(self.procs, self.conns):
            stop(proc, conn, ("shutdown", ()))
        self.procs, self.conns = [], []
        driver = getattr(self, "driver", None)
        if driver is not None:
            leave_group(driver)
        if getattr(self, "segment", None) is not None:  # no segment left behind
            self.segment.close()
            self.segment.unlink()
            self.segment = None
        if getattr(self, "outbox", None) is not None:
            self.outbox.close(unlink=True)
            self.outbox = None
        atexit.unregister(self.shutdown)
