"""The shared-memory broadcast the multi-process executor hands its calls through: every
reader gets every message once, in order; a message too large for the segment is flagged
for the socket; the writer never overwrites a message a reader has not taken."""

from __future__ import annotations

import numpy as np
import pytest

from quire.core.shm_broadcast import Broadcast, wait_for


def test_every_reader_gets_every_message_in_order():
    writer = Broadcast(f"quire-calls-test-{np.random.randint(1 << 30)}", 2, payload_bytes=4096)
    readers = [Broadcast(writer.name, 2, reader=i) for i in range(2)]
    try:
        for step in range(3):
            batch = ("execute", (np.arange(step + 5), {"step": step}))
            assert writer.publish(batch, timeout_s=1.0)
            for r in readers:
                assert r.poll()
                in_memory, got = r.take()
                assert in_memory and got[0] == "execute" and got[1][1] == {"step": step}
                np.testing.assert_array_equal(got[1][0], np.arange(step + 5))
                got[1][0][0] = -1  # a reader's copy is its own
                assert not r.poll()
        assert not writer.publish(("execute", (np.zeros(2048),)), timeout_s=1.0)
        for r in readers:  # too large: readers are told to take it from the socket
            assert r.poll() and r.take() == (False, None)
    finally:
        for r in readers:
            r.close()
        writer.close(unlink=True)


def test_writer_waits_for_slow_readers_and_gives_up_when_they_are_gone():
    writer = Broadcast(f"quire-calls-test-{np.random.randint(1 << 30)}", 1, payload_bytes=256)
    reader = Broadcast(writer.name, 1, reader=0)
    try:
        assert writer.publish("first", timeout_s=1.0)
        with pytest.raises(RuntimeError, match="did not take the previous call"):
            writer.publish("second", timeout_s=0.2)  # the reader has not taken "first"
        with pytest.raises(RuntimeError, match="did not take"):
            writer.publish("second", timeout_s=60, alive=lambda: False)  # at once
        assert reader.take() == (True, "first")
        assert writer.publish("second", timeout_s=1.0)
        wait_for(reader.poll, idle=lambda: False)
        assert reader.take() == (True, "second")
        wait_for(reader.poll, idle=lambda: True)  # nothing comes: returns when idle says so
        assert not reader.poll()
    finally:
        reader.close()
        writer.close(unlink=True)
