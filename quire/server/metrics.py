"""Prometheus text exposition of the engine's figures (no client library needed)."""

from __future__ import annotations

import threading
import time
from bisect import bisect_left

from quire.core.engine import EngineStats
from quire.core.outputs import RequestOutput

_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)


class Histogram:
    def __init__(self, name: str, doc: str, buckets: tuple[float, ...] = _LATENCY_BUCKETS):
        self.name, self.doc, self.buckets = name, doc, buckets
        self.counts = [0] * (len(buckets) + 1)
        self.sum = 0.0
        self.count = 0
        self._lock = threading.Lock()

    def observe(self, value: float) -> None:
        with self._lock:
            self.counts[bisect_left(self.buckets, value)] += 1
            self.sum += value
            self.count += 1

    def render(self) -> list[str]:
        lines = [f"# HELP {self.name} {self.doc}", f"# TYPE {self.name} histogram"]
        cumulative = 0
        for bound, n in zip(self.buckets, self.counts):
            cumulative += n
            lines.append(f'{self.name}_bucket{{le="{bound}"}} {cumulative}')
        lines.append(f'{self.name}_bucket{{le="+Inf"}} {self.count}')
        lines += [f"{self.name}_sum {self.sum}", f"{self.name}_count {self.count}"]
        return lines


class Metrics:
    def __init__(self) -> None:
        self.stats: EngineStats | None = None
        # Data parallelism: each replica's own figures (None for one not yet reporting).
        self.replica_stats: list[EngineStats | None] = []
        self.finished: dict[str, int] = {}
        self.time_to_first_token = Histogram(
            "quire:time_to_first_token_seconds", "Time from arrival to the first token.")
        self.inter_token_latency = Histogram(
            "quire:inter_token_latency_seconds", "Time between successive output tokens.")
        self.e2e_latency = Histogram(
            "quire:e2e_request_latency_seconds", "Time from arrival to the last token.")
        self.queue_time = Histogram(
            "quire:request_queue_time_seconds", "Time from arrival to first scheduling.")

    def observe_engine(self, stats: EngineStats,
                       replica_stats: list[EngineStats | None] | None = None) -> None:
        """stats: the engine's (the sums over replicas under data parallelism, with each
        replica's in replica_stats)."""
        self.stats = stats
        if replica_stats is not None:
            self.replica_stats = list(replica_stats)

    def observe_finished(self, out: RequestOutput, now: float) -> None:
        m = out.metrics
        if m.time_to_first_token is not None:
            self.time_to_first_token.observe(m.time_to_first_token)
        if m.queue_time is not None:
            self.queue_time.observe(m.queue_time)
        self.e2e_latency.observe((m.finished_time or now) - m.arrival_time)
        for c in out.outputs:
            reason = c.finish_reason or "unknown"
            self.finished[reason] = self.finished.get(reason, 0) + 1

    def observe_abort(self) -> None:
        self.finished["abort"] = self.finished.get("abort", 0) + 1

    def render(self) -> str:
        s = self.stats
        lines: list[str] = []

        replicas = [(i, r) for i, r in enumerate(self.replica_stats) if r is not None]

        def metric(name: str, kind: str, doc: str, field: str) -> None:
            lines.extend([f"# HELP {name} {doc}", f"# TYPE {name} {kind}",
                          f"{name} {getattr(s, field)}"])
            lines.extend(f'{name}{{replica="{i}"}} {getattr(r, field)}' for i, r in replicas)

        if s is not None:
            for name, kind, doc, field in _ENGINE_METRICS:
                metric(name, kind, doc, field)
            if s.spec_decode is not None:
                lines.extend(_spec_decode_lines(s.spec_decode))
        lines += ["# HELP quire:request_success_total Finished sequences by finish reason.",
                  "# TYPE quire:request_success_total counter"]
        for reason, n in sorted(self.finished.items()):
            lines.append(f'quire:request_success_total{{finished_reason="{reason}"}} {n}')
        for h in (self.time_to_first_token, self.inter_token_latency, self.e2e_latency,
                  self.queue_time):
            lines += h.render()
        lines.append(f"# scraped at {time.time():.3f}")
        return "\n".join(lines) + "\n"


# (name, kind, help, EngineStats field) of the engine's own figures.
_ENGINE_METRICS = [
    ("quire:num_requests_running", "gauge", "Requests running.", "num_running"),
    ("quire:num_requests_waiting", "gauge", "Requests waiting.", "num_waiting"),
    ("quire:kv_cache_usage_perc", "gauge", "Fraction of KV blocks in use.", "kv_cache_usage"),
    ("quire:kv_cache_used_blocks", "gauge", "KV blocks in use.", "num_used_blocks"),
    ("quire:prefix_cache_queries_total", "counter",
     "Prompt tokens looked up in the prefix cache.", "prefix_cache_queries"),
    ("quire:prefix_cache_hits_total", "counter", "Prompt tokens found in the prefix cache.",
     "prefix_cache_hits"),
    ("quire:num_preemptions_total", "counter", "Preemptions.", "num_preemptions"),
    ("quire:prompt_tokens_total", "counter", "Prefilled prompt tokens.", "num_prompt_tokens"),
    ("quire:generation_tokens_total", "counter", "Generated tokens.", "num_generation_tokens"),
]


def _spec_decode_lines(sd) -> list[str]:
    """Speculative decoding counters (vLLM's names under quire:)."""
    lines: list[str] = []
    for name, doc, value in [
        ("num_drafts", "Requests that verified draft tokens, summed over steps.", sd.num_drafts),
        ("num_draft_tokens", "Draft tokens proposed and verified.", sd.num_draft_tokens),
        ("num_accepted_tokens", "Draft tokens accepted.", sd.num_accepted_tokens),
    ]:
        full = f"quire:spec_decode_{name}_total"
        lines += [f"# HELP {full} {doc}", f"# TYPE {full} counter", f"{full} {value}"]
    full = "quire:spec_decode_num_accepted_tokens_per_pos_total"
    lines += [f"# HELP {full} Draft tokens accepted, by position in the draft.",
              f"# TYPE {full} counter"]
    lines += [f'{full}{{position="{j}"}} {n}' for j, n in enumerate(sd.accepted_per_position)]
    return lines
