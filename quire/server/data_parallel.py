"""Data parallelism: `quire serve --data-parallel-size N` runs N engine replicas, each a
process of its own with the whole model, behind one OpenAI server.

The server process keeps the handlers' side (streams, metrics, the tokenizer and grammar
validation); each replica runs an LLMEngine and its loop (add, abort, step, send the step's
outputs and stats back). A request goes to the live replica with the fewest requests in
flight, except that requests sharing a prompt prefix (their first full KV blocks) stick to
the replica that served it last, where that prefix is cached, unless it is busier than the
least loaded by more than AFFINITY_SLACK requests. `/metrics` shows the sums and each
replica's figures under a `replica` label. A replica that dies fails its in-flight requests
with an error naming it, takes no new ones, and turns `/health` unhealthy; shutdown stops
every replica.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import subprocess
import threading
import traceback
from collections import OrderedDict
from collections.abc import Sequence
from multiprocessing.connection import Connection

from quire.core.config import EngineConfig
from quire.core.engine import EngineStats
from quire.core.process_link import spawn, stop
from quire.core.sampling_params import SamplingParams
from quire.server.async_engine import EngineFailure, EngineOverloaded, StreamingEngine, _Stream

logger = logging.getLogger(__name__)

START_TIMEOUT_S = 600.0  # building an engine may compile kernels
AFFINITY_SLACK = 4
AFFINITY_BLOCKS = 2  # the leading full blocks that key prefix affinity
_AFFINITY_ENTRIES = 65536


def serve_replica(conn: Connection) -> None:
    """A replica process (quire.core.process_link): build the engine, then loop."""
    from quire.engine_factory import create_engine

    config = conn.recv()
    try:
        engine = create_engine(config)
    except BaseException:
        conn.send(("error", traceback.format_exc()))
        return
    conn.send(("ready", engine.model_info, engine.limits, engine.kv_cache.block_size))
    while True:
        timeout = 0.0 if engine.has_unfinished_requests() else 0.05
        try:
            while conn.poll(timeout):
                timeout = 0.0
                msg = conn.recv()
                if msg[0] == "add":
                    _, rid, ids, params = msg
                    try:
                        engine.add_request(ids, params, request_id=rid)
                    except (ValueError, TypeError) as exc:
                        conn.send(("reject", rid, str(exc)))
                elif msg[0] == "abort":
                    engine.abort_request(msg[1])
                else:  # "stop"
                    engine.shutdown()
                    return
        except (EOFError, OSError):  # the server is gone
            engine.shutdown()
            return
        if engine.has_unfinished_requests():
            try:
                outputs = engine.step()
            except Exception as exc:  # this replica is broken: say so and stop
                conn.send(("failed", f"{type(exc).__name__}: {exc}"))
                engine.shutdown()
                return
            conn.send(("outputs", outputs, engine.stats()))


@dataclasses.dataclass(eq=False)
class _Replica:
    index: int
    proc: subprocess.Popen
    conn: Connection
    send_lock: threading.Lock = dataclasses.field(default_factory=threading.Lock)
    in_flight: set[str] = dataclasses.field(default_factory=set)
    stats: EngineStats | None = None
    alive: bool = True


class DataParallelEngine(StreamingEngine):
    def __init__(self, config: EngineConfig, size: int,
                 max_waiting_requests: int | None = None) -> None:
        from quire.engine_factory import structured_manager
        from quire.tokenizer import HFTokenizer

        super().__init__(max_waiting_requests)
        threads = str(max(1, (os.cpu_count() or 1) // size))
        env = {**os.environ, "OMP_NUM_THREADS": threads}  # replicas share the cores
        self.replicas: list[_Replica] = []
        try:
            for index in range(size):
                proc, conn = spawn("quire.server.data_parallel:serve_replica", 120.0, env)
                self.replicas.append(_Replica(index, proc, conn))
                conn.send(config)
            for r in self.replicas:
                if not r.conn.poll(START_TIMEOUT_S):
                    raise RuntimeError(f"engine replica {r.index} did not start in "
                                       f"{START_TIMEOUT_S:.0f} s")
                msg = r.conn.recv()
                if msg[0] != "ready":
                    raise RuntimeError(f"engine replica {r.index} failed to start:\n{msg[1]}")
                _, self.model_info, self.limits, self.block_size = msg
        except BaseException:
            self.shutdown()
            raise
        self.tokenizer = HFTokenizer.from_pretrained(config.tokenizer or config.model)
        self.structured = structured_manager(self.tokenizer, self.model_info)
        self._owner: dict[str, _Replica] = {}
        self._affinity: OrderedDict[int, int] = OrderedDict()
        self._added_since_stats = [0] * size
        for r in self.replicas:
            threading.Thread(target=self._read, args=(r,), name=f"quire-replica{r.index}",
                             daemon=True).start()
        logger.info("%d engine replicas running (%s threads each)", size, threads)

    # -- routing -----------------------------------------------------------------------------
    def _prefix_key(self, prompt_ids: Sequence[int]) -> int | None:
        n = min(AFFINITY_BLOCKS, (len(prompt_ids) - 1) // self.block_size) * self.block_size
        return hash(tuple(prompt_ids[:n])) if n > 0 else None

    def _pick(self, prompt_ids: Sequence[int]) -> _Replica:
        live = [r for r in self.replicas if r.alive]
        if not live:
            raise EngineOverloaded("server unavailable: every engine replica has died; "
                                   "restart the server")
        least = min(live, key=lambda r: len(r.in_flight))
        key = self._prefix_key(prompt_ids)
        chosen = least
        if key is not None and key in self._affinity:
            sticky = self.replicas[self._affinity[key]]
            if sticky.alive and len(sticky.in_flight) <= len(least.in_flight) + AFFINITY_SLACK:
                chosen = sticky
        if key is not None:
            self._affinity[key] = chosen.index
            self._affinity.move_to_end(key)
            if len(self._affinity) > _AFFINITY_ENTRIES:
                self._affinity.popitem(last=False)
        return chosen

    # -- the StreamingEngine contract ---------------------------------------------------------
    def _submit(self, request_id: str, prompt_ids: Sequence[int], params: SamplingParams,
                stream: _Stream) -> None:
        with self._lock:
            self._check_overload(self.num_waiting())
            replica = self._pick(prompt_ids)
            self._streams[request_id] = stream
            self._owner[request_id] = replica
            replica.in_flight.add(request_id)
            self._added_since_stats[replica.index] += 1
        self._post(replica, ("add", request_id, list(prompt_ids), params))

    def abort(self, request_id: str) -> None:
        with self._lock:
            replica = self._owner.pop(request_id, None)
            aborted = self._streams.pop(request_id, None) is not None
            if replica is not None:
                replica.in_flight.discard(request_id)
        if aborted:
            self.metrics.observe_abort()
        if replica is not None:
            self._post(replica, ("abort", request_id))

    def num_waiting(self) -> int:
        return sum((r.stats.num_waiting if r.stats else 0) + self._added_since_stats[r.index]
                   for r in self.replicas if r.alive)

    def shutdown(self) -> None:
        for r in self.replicas:
            r.alive = False
            with r.send_lock:
                stop(r.proc, r.conn, ("stop",))

    # -- replicas ----------------------------------------------------------------------------
    def _post(self, replica: _Replica, message: tuple) -> None:
        try:
            with replica.send_lock:
                replica.conn.send(message)
        except (OSError, ValueError):  # its reader reports the death
            pass

    def _read(self, replica: _Replica) -> None:
        while True:
            try:
                msg = replica.conn.recv()
            except (EOFError, OSError):
                break
            if msg[0] == "outputs":
                _, outputs, stats = msg
                for out in outputs:
                    self._deliver(out)
                    if out.finished:
                        with self._lock:
                            self._owner.pop(out.request_id, None)
                            replica.in_flight.discard(out.request_id)
                with self._lock:
                    replica.stats = stats
                    self._added_since_stats[replica.index] = 0
                self._publish_stats()
            elif msg[0] == "reject":
                with self._lock:
                    self._owner.pop(msg[1], None)
                    replica.in_flight.discard(msg[1])
                self._send(msg[1], ValueError(msg[2]))
            elif msg[0] == "failed":
                self._lose(replica, f"engine replica {replica.index} failed: {msg[1]}")
                return
        if replica.alive:  # not a shutdown: the process died
            code = replica.proc.wait()
            self._lose(replica, f"engine replica {replica.index} died (exit code {code})")

    def _lose(self, replica: _Replica, why: str) -> None:
        logger.error("%s; its requests fail, the others serve on", why)
        with self._lock:
            replica.alive = False
            lost = list(replica.in_flight)
            replica.in_flight.clear()
            for rid in lost:
                self._owner.pop(rid, None)
        self.failure = why
        for rid in lost:
            self._send(rid, EngineFailure(why))

    def _publish_stats(self) -> None:
        per_replica = [r.stats for r in self.replicas]
        known = [s for s in per_replica if s is not None]
        if not known:
            return
        total = EngineStats(**{
            f.name: sum(getattr(s, f.name) for s in known)
            for f in dataclasses.fields(EngineStats)
            if f.name not in ("kv_cache_usage", "spec_decode")},
            kv_cache_usage=sum(s.kv_cache_usage for s in known) / len(known))
        self.metrics.observe_engine(total, per_replica)
