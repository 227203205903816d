"""`quire bench structured`: what structured outputs cost. For each count of running
requests, the same decode steps with every request constrained by a JSON schema against
none constrained (time per step, measured side by side), and the time to first token of a
request whose schema is new (compiled while it waits) against a cached one."""

from __future__ import annotations

import time
from typing import Any

from quire.core.sampling_params import SamplingParams, StructuredOutputsParams

# Long enough to keep a request decoding for the whole measured window.
SCHEMA = {"type": "object", "properties": {
    "items": {"type": "array", "items": {"type": "integer", "minimum": 0, "maximum": 999},
              "minItems": 200, "maxItems": 200}}, "required": ["items"],
    "additionalProperties": False}


def _decode_step_time(llm, num_requests: int, constrained: bool, num_steps: int) -> float:
    """Median seconds per step over num_steps steps with num_requests decoding."""
    engine = llm.engine
    spec = StructuredOutputsParams(json=SCHEMA) if constrained else None
    params = SamplingParams(temperature=0, max_tokens=num_steps + 8, ignore_eos=True,
                            structured_outputs=spec)
    ids = [engine.add_request([5 + i % 50, 7, 9], params) for i in range(num_requests)]
    times = []
    for _ in range(4):  # prefill (and grammar start-up) steps, not measured
        engine.step()
    for _ in range(num_steps):
        t0 = time.perf_counter()
        engine.step()
        times.append(time.perf_counter() - t0)
    engine.abort_request(ids)
    times.sort()
    return times[len(times) // 2]


def _ttft(llm, schema: dict) -> float:
    engine = llm.engine
    params = SamplingParams(temperature=0, max_tokens=1,
                            structured_outputs=StructuredOutputsParams(json=schema))
    t0 = time.perf_counter()
    rid = engine.add_request([5, 6, 7], params)
    while True:
        outs = [o for o in engine.step() if o.request_id == rid]
        if outs and outs[0].outputs[0].token_ids or (outs and outs[0].finished):
            engine.abort_request(rid)
            return time.perf_counter() - t0


def run_structured(llm, batch_sizes: list[int], num_steps: int) -> list[dict[str, Any]]:
    rows = []
    _decode_step_time(llm, 2, True, 4)  # warm up: grammar engine built, shapes seen
    for n in batch_sizes:
        free = _decode_step_time(llm, n, False, num_steps)
        masked = _decode_step_time(llm, n, True, num_steps)
        rows.append({"system": f"quire, {n} running", "running": n,
                     "step_ms_unconstrained": free * 1e3, "step_ms_json_schema": masked * 1e3,
                     "overhead_pct": (masked / free - 1) * 100})
    fresh = {**SCHEMA, "description": f"fresh {time.time()}"}  # never compiled before
    rows.append({"system": "time to first token", "ttft_ms_new_schema": _ttft(llm, fresh) * 1e3,
                 "ttft_ms_cached_schema": _ttft(llm, fresh) * 1e3})
    return rows
