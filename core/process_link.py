"""Child Python processes linked to this one by an authenticated local socket: how the
multi-process executors and the data-parallel server start their workers.

A child is a fresh interpreter (nothing inherited; the parent's script is never
re-imported, so callers need no ``if __name__ == "__main__"`` guard) that runs
``entry(conn)``, entry being "package.module:function"; the two ends then exchange pickled
messages over ``conn`` (a multiprocessing Connection), after a mutual challenge with a
random key the child reads from its stdin.
"""

from __future__ import annotations

import importlib
import secrets
import socket
import subprocess
import sys
import time
from multiprocessing.connection import Connection, answer_challenge, deliver_challenge


def spawn(entry: str, timeout_s: float, env: dict[str, str] | None = None
          ) -> tuple[subprocess.Popen, Connection]:
    """Start a child running entry(conn); returns (process, connection) once it has
    connected and proven the key. RuntimeError if it dies or is not there in timeout_s."""
    authkey = secrets.token_bytes(32)
    with socket.create_server(("127.0.0.1", 0)) as server:
        code = ("from quire.core.process_link import child_main; "
                f"child_main({entry!r}, {server.getsockname()[1]})")
        proc = subprocess.Popen([sys.executable, "-c", code], stdin=subprocess.PIPE, text=True,
                                env=env)
        assert proc.stdin is not None
        proc.stdin.write(authkey.hex() + "\n")
        proc.stdin.close()
        server.settimeout(0.5)
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                sock, _ = server.accept()
                break
            except TimeoutError:
                if proc.poll() is not None:
                    raise RuntimeError(f"{entry} exited with code {proc.returncode} before "
                                       "connecting") from None
                if time.monotonic() > deadline:
                    proc.kill()
                    raise RuntimeError(f"{entry} did not connect in {timeout_s:.0f} s") from None
    sock.setblocking(True)
    conn = Connection(sock.detach())
    deliver_challenge(conn, authkey)
    answer_challenge(conn, authkey)
    return proc, conn


def child_main(entry: str, port: int) -> None:
    """The child's side: connect, prove the key, run entry(conn)."""
    authkey = bytes.fromhex(sys.stdin.readline().strip())
    conn = Connection(socket.create_connection(("127.0.0.1", port)).detach())
    answer_challenge(conn, authkey)
    deliver_challenge(conn, authkey)
    module, _, function = entry.partition(":")
    getattr(importlib.import_module(module), function)(conn)


def stop(proc: subprocess.Popen, conn: Connection | None, message: object,
         timeout_s: float = 10.0) -> None:
    """Ask a child to stop (send message), wait, then kill it if it has not."""
    if conn is not None:
        try:
            conn.send(message)
        except (OSError, ValueError):
            pass
    try:
        proc.wait(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=5)
    if conn is not None:
        conn.close()
