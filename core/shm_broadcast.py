"""One writer, several readers, one message at a time, through a shared-memory segment on
this host: how the multi-process executor hands each step's call (the Batch) to its
workers once, instead of pickling it down one socket per worker.

Layout: a header line holding the writer's sequence number and the message length, one line
per reader holding the last sequence number it has read, then the payload. The writer waits
until every reader has read the previous message before it overwrites it (in practice they
have: a worker reads the batch before it can meet the driver in the step's collectives).
A message larger than the payload area is not written: the header says "on the socket"
(length -1) and the writer sends it down each reader's connection instead, so order holds.

Readers spin briefly (a step's call follows the last one within microseconds), then back
off to short sleeps, so an idle engine does not burn a core per worker.
"""

from __future__ import annotations

import pickle
import time
from collections.abc import Callable
from multiprocessing import resource_tracker, shared_memory
from typing import Any

import numpy as np

PAYLOAD_BYTES = 4 << 20
_LINE = 64  # bytes: each counter on a cache line of its own
_SPIN_S = 0.05  # how long a reader spins before it sleeps between looks
_NAP_S = 0.0005


def segment_bytes(readers: int, payload_bytes: int | None = None) -> int:
    return (1 + readers) * _LINE + (PAYLOAD_BYTES if payload_bytes is None else payload_bytes)


class Broadcast:
    """The writer's end when reader is None (it creates the segment), else reader's end."""

    def __init__(self, name: str, readers: int, reader: int | None = None,
                 payload_bytes: int | None = None) -> None:
        self.reader, self.readers, self.seq = reader, readers, 0
        create = reader is None
        self.shm = shared_memory.SharedMemory(
            name=name, create=create, size=segment_bytes(readers, payload_bytes) if create else 0)
        if not create:  # the writer owns the segment: a reader must not unlink it at exit
            resource_tracker.unregister(self.shm._name, "shared_memory")  # noqa: SLF001
        self.lines = np.ndarray((1 + readers, _LINE // 8), np.int64, buffer=self.shm.buf)
        if create:
            self.lines[:] = 0
        self.payload = self.shm.buf[(1 + readers) * _LINE:]

    @property
    def name(self) -> str:
        return self.shm.name

    # -- the writer ---------------------------------------------------------------------------
    def publish(self, message: Any, timeout_s: float,
                alive: Callable[[], bool] = lambda: True) -> bool:
        """Write message for every reader; False when it is too large for the segment (the
        caller then sends it on each reader's socket, which readers are told to read)."""
        data = pickle.dumps(message, protocol=pickle.HIGHEST_PROTOCOL)
        _wait(lambda: int(self.lines[1:, 0].min()) >= self.seq, timeout_s, alive,
              "a tensor-parallel worker did not take the previous call")
        fits = len(data) <= len(self.payload)
        if fits:
            self.payload[: len(data)] = data
        self.lines[0, 1] = len(data) if fits else -1
        self.seq += 1
        self.lines[0, 0] = self.seq  # last: readers look at this
        return fits

    # -- a reader -----------------------------------------------------------------------------
    def poll(self) -> bool:
        """Whether a message is waiting for this reader."""
        return int(self.lines[0, 0]) > self.seq

    def take(self) -> tuple[bool, Any]:
        """The waiting message: (True, message), or (False, None) when it was sent on the
        socket instead. Only after poll() said one is waiting."""
        self.seq += 1
        length = int(self.lines[0, 1])
        message = pickle.loads(self.payload[:length]) if length >= 0 else None
        self.lines[1 + self.reader, 0] = self.seq  # read: the writer may overwrite it
        return length >= 0, message

    def close(self, unlink: bool = False) -> None:
        self.lines = None  # release the views before the mapping
        self.payload.release()
        self.shm.close()
        if unlink:
            self.shm.unlink()


def wait_for(ready: Callable[[], bool], idle: Callable[[], bool]) -> None:
    """Spin until ready(), then, after _SPIN_S, sleep briefly between looks; return early
    when idle() says to stop waiting (it is asked only while sleeping)."""
    start = time.monotonic()
    while not ready():
        if time.monotonic() - start < _SPIN_S:
            time.sleep(0)
            continue
        if idle():
            return
        time.sleep(_NAP_S)


def _wait(ready: Callable[[], bool], timeout_s: float, alive: Callable[[], bool],
          what: str) -> None:
    if ready():
        return
    deadline = time.monotonic() + timeout_s
    while not ready():
        if not alive() or time.monotonic() > deadline:
            raise RuntimeError(what)
        time.sleep(0)
