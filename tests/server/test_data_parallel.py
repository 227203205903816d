"""`quire serve --data-parallel-size 2`: two engine replicas behind one server. Greedy
answers equal one engine's, both replicas serve, /metrics labels each replica, prompts
sharing a prefix stick to one replica, and a dead replica turns /health unhealthy while
the other serves on; nothing is left running after the server stops."""

from __future__ import annotations

import concurrent.futures
import os
import signal
import subprocess
import time

import httpx

from quire import LLM, SamplingParams
from quire.server.data_parallel import AFFINITY_SLACK, DataParallelEngine, _Replica
from tests.server_fixtures import Server

PROMPTS = ["Hello world", "the scheduler serves paged attention blocks", "a", "one two three",
           "Paris is the capital of France", "the cache"]


def _complete(url: str, prompt: str) -> str:
    r = httpx.post(url + "/v1/completions", json={
        "model": "tiny", "prompt": prompt, "max_tokens": 8, "temperature": 0,
        "ignore_eos": True}, timeout=120)
    assert r.status_code == 200, r.text
    return r.json()["choices"][0]["text"]


def _replica_pids(server: Server) -> list[int]:
    out = subprocess.run(["pgrep", "-P", str(server.proc.pid), "-f", "serve_replica"],
                         capture_output=True, text=True)
    return [int(p) for p in out.stdout.split()]


def test_two_replicas_serve_like_one(llama_dir):
    llm = LLM(llama_dir, dtype="float32", block_size=8, num_blocks=256)
    offline = [o.outputs[0].text for o in llm.generate(
        PROMPTS, SamplingParams(temperature=0, max_tokens=8, ignore_eos=True),
        use_tqdm=False)]
    server = Server(llama_dir, "--data-parallel-size", "2")
    try:
        pids = _replica_pids(server)
        assert len(pids) == 2
        with concurrent.futures.ThreadPoolExecutor(6) as pool:
            got = list(pool.map(lambda p: _complete(server.url, p), PROMPTS * 2))
        assert got == offline * 2
        text = httpx.get(server.url + "/metrics").text
        per_replica = [server.metric(f'quire:prompt_tokens_total{{replica="{i}"}}')
                       for i in (0, 1)]
        assert all(n > 0 for n in per_replica), text  # both replicas served
        assert server.metric("quire:prompt_tokens_total") == sum(per_replica)

        # A dead replica: health turns 503, the other one serves on.
        os.kill(pids[0], signal.SIGKILL)
        deadline = time.monotonic() + 30
        while httpx.get(server.url + "/health").status_code == 200:
            assert time.monotonic() < deadline, "health stayed 200 after a replica died"
            time.sleep(0.2)
        health = httpx.get(server.url + "/health")
        assert health.status_code == 503 and "replica" in health.json()["error"]["message"]
        assert [_complete(server.url, p) for p in PROMPTS[:3]] == offline[:3]
    finally:
        server.stop()
    deadline = time.monotonic() + 20
    while any(_running(pid) for pid in pids):  # no replica left behind
        assert time.monotonic() < deadline, [pid for pid in pids if _running(pid)]
        time.sleep(0.2)


def _running(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split()[2] != "Z"
    except FileNotFoundError:
        return False


def _router(sizes: list[int]) -> DataParallelEngine:
    """A DataParallelEngine's routing state alone (no processes)."""
    from collections import OrderedDict

    dp = DataParallelEngine.__new__(DataParallelEngine)
    dp.block_size = 4
    dp._affinity = OrderedDict()
    dp.replicas = [_Replica(i, None, None) for i in range(len(sizes))]
    for r, n in zip(dp.replicas, sizes):
        r.in_flight = {f"{r.index}-{k}" for k in range(n)}
    return dp


def test_routing_prefers_the_replica_holding_the_prefix():
    dp = _router([0, 0])
    shared = list(range(100, 120))
    first = dp._pick(shared + [1])
    first.in_flight.add("x")
    # Same two leading blocks: back to the same replica although the other is idler.
    assert dp._pick(shared + [2, 3]) is first
    # A different prefix goes to the least loaded.
    assert dp._pick(list(range(500, 520))) is not first
    # Too busy (beyond the slack): the prefix gives way to load.
    first.in_flight.update(f"busy-{k}" for k in range(AFFINITY_SLACK + 1))
    assert dp._pick(shared + [4]) is not first
    # Dead replicas take nothing.
    dp.replicas[1].alive = False
    assert dp._pick([7] * 3) is dp.replicas[0]
