"""Greedy-token agreement between two backends' outputs, up to near-ties of the reference."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from quire.core.outputs import RequestOutput


@dataclass(slots=True)
class Agreement:
    num_compared: int = 0  # tokens compared, over all requests
    mismatches: list[str] = field(default_factory=list)  # one line per disagreeing request

    @property
    def ok(self) -> bool:
        return not self.mismatches and self.num_compared > 0


def greedy_agreement(ref: Sequence[RequestOutput], got: Sequence[RequestOutput],
                     near_tie: float) -> Agreement:
    """Compare each request's first completion token by token, up to the first step where
    the reference's own top-2 logprobs are closer than near_tie (either choice is right
    there). The reference must carry logprobs (SamplingParams(logprobs >= 1))."""
    result = Agreement()
    for r, g in zip(ref, got):
        ref_ids, got_ids = r.outputs[0].token_ids, g.outputs[0].token_ids
        n = len(ref_ids)
        for i, entry in enumerate(r.outputs[0].logprobs or []):
            top = sorted((lp.logprob for lp in entry.values()), reverse=True)
            if len(top) > 1 and top[0] - top[1] < near_tie:
                n = i
                break
        result.num_compared += n
        if got_ids[:n] != ref_ids[:n]:
            result.mismatches.append(f"prompt {r.prompt_token_ids[:8]}...: got {got_ids[:n]}, "
                                     f"want {ref_ids[:n]}")
    return result
