"""Parallel sampling (n > 1): one parent request fans out into n child Requests that share
the prompt's KV blocks through prefix caching and ref counts; outputs are gathered back per
parent. A request with n == 1 is a parent with one child under the same id."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from quire.core.detokenizer import IncrementalDetokenizer, Tokenizer
from quire.core.outputs import Logprob
from quire.core.request import Request
from quire.core.sampling_params import SamplingParams


@dataclass(slots=True)
class Child:
    """One generated sequence of a parent, with its own detokenizer and logprobs."""

    request: Request
    detokenizer: IncrementalDetokenizer
    logprobs: list[dict[int, Logprob]] | None
    cumulative_logprob: float | None


@dataclass(slots=True, kw_only=True)
class ParentRequest:
    """What the caller submitted; error is set when the prompt can never run."""

    request_id: str
    prompt: str | None
    prompt_token_ids: list[int]
    params: SamplingParams
    children: list[Child]
    arrival_time: float
    error: str | None = None

    @property
    def is_finished(self) -> bool:
        return all(c.request.is_finished for c in self.children)


def child_id(request_id: str, index: int, n: int) -> str:
    return request_id if n == 1 else f"{request_id}#{index}"


def fan_out(
    *,
    request_id: str,
    prompt: str | None,
    prompt_token_ids: list[int],
    params: SamplingParams,
    tokenizer: Tokenizer,
    block_size: int,
    max_tokens: int,
    arrival_time: float,
    cache_salt: str | None = None,
    error: str | None = None,
) -> ParentRequest:
    """A parent with params.n children. Child i of a seeded request gets seed + i, so the
    n samples differ yet reproduce."""
    children = []
    for i in range(params.n):
        child_params = params
        if params.n > 1:
            seed = None if params.seed is None else params.seed + i
            child_params = dataclasses.replace(params, n=1, seed=seed)
        request = Request(
            request_id=child_id(request_id, i, params.n), prompt_token_ids=prompt_token_ids,
            sampling_params=child_params, eos_token_id=tokenizer.eos_token_id,
            block_size=block_size, max_tokens=max(max_tokens, 1),
            extra_keys=(cache_salt,) if cache_salt else (), arrival_time=arrival_time,
        )
        detokenizer = IncrementalDetokenizer(
            tokenizer, prompt_token_ids, params.skip_special_tokens, params.stop_strings,
            params.include_stop_str_in_output,
        )
        logprobs: list[dict[int, Logprob]] | None = [] if params.logprobs is not None else None
        children.append(Child(request, detokenizer, logprobs,
                              0.0 if logprobs is not None else None))
    return ParentRequest(request_id=request_id, prompt=prompt,
                         prompt_token_ids=prompt_token_ids, params=params, children=children,
                         arrival_time=arrival_time, error=error)
