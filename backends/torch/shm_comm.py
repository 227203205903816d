"""Collectives between tensor-parallel ranks on one host through shared memory, for CPU
ranks (the multi-process executor): each rank copies its tensor into its slot of one
segment, publishes a sequence number, waits until every rank has published it, and reads
the others' slots. Two halves alternate by sequence parity, so a rank may write its next
tensor while a slower one still reads this one (no rank can get two collectives ahead:
each waits for all). No sockets and no serialization: gloo's per-call cost over loopback
is what this removes. Tensors larger than a slot go through gloo.

The driver creates the segment (and unlinks it at shutdown); workers attach by name.
native_spec() describes the segment to native code that runs the same all-reduce without
Python (the cpu backend's fused decode layer, comm_csrc.py); the sequence number and the
time accounting live in one small tensor both sides update, so their collectives
interleave.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from multiprocessing import resource_tracker, shared_memory

import numpy as np
import torch

from quire.backends.torch.parallel import Communicator

SLOT_BYTES = 8 << 20
_HEADER = 64  # one cache line per rank's counter


def segment_bytes(size: int, slot_bytes: int = SLOT_BYTES) -> int:
    return size * _HEADER + 2 * size * slot_bytes


class ShmCommunicator(Communicator):
    def __init__(self, rank: int, size: int, name: str, timeout_s: float,
                 peers_alive: Callable[[], bool] = lambda: True,
                 slot_bytes: int = SLOT_BYTES) -> None:
        """peers_alive: whether the other ranks' processes still run, checked while
        waiting (a dead peer fails the collective at once instead of at timeout_s)."""
        # [sequence number, ns in native collectives, ns of them waiting]: native_spec()
        self.state = torch.zeros(3, dtype=torch.int64)
        self._state = self.state.numpy()
        self._seconds = self._wait_seconds = 0.0  # the Python collectives' share
        super().__init__(rank, size)
        self.peers_alive = peers_alive
        self.shm = shared_memory.SharedMemory(name=name)
        if rank != 0:  # the driver owns the segment: workers must not unlink it at exit
            resource_tracker.unregister(self.shm._name, "shared_memory")  # noqa: SLF001
        self.slot_bytes, self.timeout_s = slot_bytes, timeout_s
        self.counters = np.ndarray((size, _HEADER // 8), np.int64, buffer=self.shm.buf)
        self.data = self.shm.buf[size * _HEADER:]

    @property
    def seconds(self) -> float:  # in collectives (Communicator.seconds), native ones too
        return self._seconds + self._state[1] / 1e9

    @seconds.setter
    def seconds(self, value: float) -> None:
        self._seconds, self._state[1] = value, 0

    @property
    def wait_seconds(self) -> float:
        """Of seconds, the time spent waiting for the other ranks."""
        return self._wait_seconds + self._state[2] / 1e9

    @wait_seconds.setter
    def wait_seconds(self, value: float) -> None:
        self._wait_seconds, self._state[2] = value, 0

    def native_spec(self) -> tuple[list[int], torch.Tensor, float, Callable[[], bool]]:
        """The segment for native code running this all-reduce: [address, rank, size, slot
        bytes], the state tensor, the timeout and peers_alive. Valid until close()."""
        address = self.counters.__array_interface__["data"][0]
        return ([address, self.rank, self.size, self.slot_bytes], self.state, self.timeout_s,
                self.peers_alive)

    def _slot(self, half: int, rank: int, dtype: torch.dtype, count: int) -> torch.Tensor:
        offset = (half * self.size + rank) * self.slot_bytes
        return torch.frombuffer(self.data, dtype=dtype, count=count, offset=offset)

    def _exchange(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Every rank's x (same shape and dtype on all), as views of the segment."""
        self._state[0] += 1
        seq = int(self._state[0])
        half = seq % 2
        flat = x.contiguous().view(-1)
        self._slot(half, self.rank, x.dtype, flat.numel()).copy_(flat)
        self.counters[self.rank, 0] = seq
        deadline = check = None
        waited = time.perf_counter()
        while self.counters[:, 0].min() < seq:
            now = time.monotonic()
            if deadline is None:
                deadline, check = now + self.timeout_s, now + 0.05
            elif now > check:
                late = [r for r in range(self.size) if self.counters[r, 0] < seq]
                if not self.peers_alive():
                    raise RuntimeError(f"tensor-parallel rank(s) {late} died")
                if now > deadline:
                    raise RuntimeError(f"tensor-parallel rank(s) {late} did not reach the "
                                       f"collective in {self.timeout_s:.0f} s")
                check = now + 0.05
            time.sleep(0)
        self._wait_seconds += time.perf_counter() - waited
        return [self._slot(half, r, x.dtype, flat.numel()).view(x.shape)
                for r in range(self.size)]

    def _fits(self, x: torch.Tensor) -> bool:
        return x.numel() * x.element_size() <= self.slot_bytes and x.device.type == "cpu"

    def all_reduce(self, x: torch.Tensor) -> torch.Tensor:
        if not self._fits(x):
            return super().all_reduce(x)
        start = time.perf_counter()
        parts = self._exchange(x)
        total = parts[0].clone()
        for p in parts[1:]:  # the same order on every rank: identical sums
            total += p
        x.copy_(total)
        self._seconds += time.perf_counter() - start
        return x

    def gather_rows(self, x: torch.Tensor) -> torch.Tensor | None:
        if not self._fits(x):
            return super().gather_rows(x)
        start = time.perf_counter()
        parts = self._exchange(x)
        out = torch.cat(parts, dim=-1) if self.rank == 0 else None
        self._seconds += time.perf_counter() - start
        return out

    def close(self) -> None:
        self.counters = None  # release the views before the mapping
        try:
            self.data.release()
            self.shm.close()
        except BufferError:  # a tensor still views the segment: the mapping goes at exit
            pass


def create_segment(name: str, size: int) -> shared_memory.SharedMemory:
    """The driver's segment (zeroed: every counter starts at 0)."""
    shm = shared_memory.SharedMemory(name=name, create=True, size=segment_bytes(size))
    shm.buf[: size * _HEADER] = bytes(size * _HEADER)
    return shm
