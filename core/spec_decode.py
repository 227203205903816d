"""Speculative decoding, the core's part: proposers, the accept rule's bookkeeping, the
adaptive back-off and the acceptance statistics.

A step verifies k draft tokens of a request by running them as k extra query positions
after its last known token; the batch samples every one of the k + 1 positions (rows
Batch.logits_row_start[i]:logits_row_start[i+1] of request i, each with the sampling
parameters and penalties of its own output step). Drafts are deterministic (one-hot q), so
the standard rule "accept d with probability min(1, p(d)/q(d)), else sample from
max(p - q, 0)" reduces to: accept d exactly when the row's own sample from p equals d.
P(accept) = p(d), and a sample from p that is not d is distributed as p without d,
renormalized, which is the residual. So backends sample each row as usual and the core
keeps, per request, the leading rows whose sample equals their draft plus the first row
that differs (or the bonus row): outputs follow the target model's distribution exactly,
and greedy output equals greedy decoding without speculation.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from quire.core.request import Request
from quire.core.spec_config import SpeculativeConfig


class Proposer(ABC):
    """Proposes draft tokens for requests that are decoding."""

    @abstractmethod
    def propose(self, requests: Sequence[Request], num_drafts: Sequence[int]
                ) -> list[list[int]]:
        """Up to num_drafts[i] tokens that may follow requests[i]'s all_token_ids (fewer or
        none when it has no good guess)."""

    def forget(self, request_ids: Sequence[str]) -> None:  # noqa: B027 (optional hook)
        """These requests have finished: drop any state kept for them."""

    def shutdown(self) -> None:  # noqa: B027 (optional hook)
        """Release what the proposer holds (a draft model, its cache)."""


class NgramProposer(Proposer):
    """Prompt lookup: find the most recent earlier occurrence of the context's last n tokens
    (n from prompt_lookup_max down to prompt_lookup_min) and propose what followed it."""

    def __init__(self, min_n: int, max_n: int) -> None:
        self.min_n, self.max_n = min_n, max_n

    def propose(self, requests: Sequence[Request], num_drafts: Sequence[int]
                ) -> list[list[int]]:
        return [ngram_lookup(np.asarray(r.all_token_ids, dtype=np.int64), self.min_n,
                             self.max_n, k) if k > 0 else []
                for r, k in zip(requests, num_drafts)]


def ngram_lookup(tokens: np.ndarray, min_n: int, max_n: int, k: int) -> list[int]:
    """Continuation of the latest earlier match of tokens' longest matching suffix
    (length between min_n and max_n); [] when none. Vectorized over match candidates."""
    length = len(tokens)
    # Candidates: end positions j < length - 1 of a match of the suffix so far.
    ends = np.flatnonzero(tokens[:-1] == tokens[-1])
    best: np.ndarray | None = ends if min_n <= 1 and len(ends) else None
    for m in range(1, min(max_n, length - 1)):
        ends = ends[ends >= m]
        ends = ends[tokens[ends - m] == tokens[length - 1 - m]]
        if not len(ends):
            break
        if m + 1 >= min_n:
            best = ends
    if best is None:
        return []
    start = int(best[-1]) + 1
    return tokens[start : start + k].tolist()


def accepted_counts(sampled: np.ndarray, drafts: np.ndarray, row_start: np.ndarray
                    ) -> np.ndarray:
    """Per request, how many leading draft rows sampled their own draft token. sampled and
    drafts are per logits row (drafts -1 on rows that verify nothing: each request's last
    row); row_start [S + 1] the requests' first rows."""
    rejected = np.flatnonzero(sampled != drafts)  # includes every request's last row
    first = rejected[np.searchsorted(rejected, row_start[:-1])]
    return (first - row_start[:-1]).astype(np.int64)


class StepCostModel:
    """Time of a decode step (proposing, scheduling, forward, sampling, accepting) as
    a + b * tokens, fitted online (exponentially weighted least squares over recent decode
    steps; prefill chunks cost differently per token and are left out), so the cost of
    verifying drafts can be weighed."""

    def __init__(self, decay: float = 0.95, min_steps: int = 8) -> None:
        self.decay, self.min_steps = decay, min_steps
        self._sums = np.zeros(5)  # weight, T, t, T^2, T*t
        self.num_steps = 0

    def observe(self, num_tokens: int, seconds: float) -> None:
        self._sums *= self.decay
        self._sums += (1.0, num_tokens, seconds, num_tokens * num_tokens, num_tokens * seconds)
        self.num_steps += 1

    def coefficients(self) -> tuple[float, float] | None:
        """(a seconds per step, b seconds per token), None while too little is known."""
        w, st, sy, stt, sty = self._sums
        var = w * stt - st * st
        if self.num_steps < self.min_steps or var <= 1e-9 * max(w * stt, 1e-30):
            return None
        b = (w * sty - st * sy) / var
        a = (sy - b * st) / w
        return max(a, 0.0), max(b, 0.0)

    def token_share(self, num_tokens: int) -> float:
        """The fraction of a step of num_tokens tokens that scales with tokens: a draft
        token pays for itself when it is accepted with at least this probability."""
        coef = self.coefficients()
        if coef is None:
            return 0.0
        a, b = coef
        total = a + b * num_tokens
        return b * num_tokens / total if total > 0 else 0.0


@dataclass(slots=True)
class SpecDecodeStats:
    """Counters since start: drafts verified, tokens proposed and accepted, and accepted
    tokens by draft position (index j: drafts at position j that were accepted)."""

    num_drafts: int = 0
    num_draft_tokens: int = 0
    num_accepted_tokens: int = 0
    accepted_per_position: list[int] = field(default_factory=list)

    @property
    def acceptance_rate(self) -> float:
        return self.num_accepted_tokens / self.num_draft_tokens if self.num_draft_tokens else 0.0

    @property
    def mean_accepted_length(self) -> float:
        """Tokens a verified request gains per step: accepted drafts + the sampled one."""
        return 1.0 + self.num_accepted_tokens / self.num_drafts if self.num_drafts else 0.0

    def snapshot(self) -> SpecDecodeStats:
        return SpecDecodeStats(self.num_drafts, self.num_draft_tokens,
                               self.num_accepted_tokens, list(self.accepted_per_position))

    def record(self, num_drafts: np.ndarray, accepted: np.ndarray) -> None:
        verified = num_drafts > 0
        if not verified.any():
            return
        k = int(num_drafts.max())
        if len(self.accepted_per_position) < k:
            self.accepted_per_position.extend([0] * (k - len(self.accepted_per_position)))
        self.num_drafts += int(verified.sum())
        self.num_draft_tokens += int(num_drafts.sum())
        self.num_accepted_tokens += int(accepted.sum())
        # Position j's draft was accepted in every run longer than j.
        runs = np.bincount(accepted[verified], minlength=k + 1)
        per_pos = runs[::-1].cumsum()[::-1][1:]
        for j, c in enumerate(per_pos.tolist()):
            self.accepted_per_position[j] += c


class SpecDecoder:
    """The engine's speculative-decoding state: which requests draft how many tokens this
    step (with the adaptive back-off), the proposer, and the statistics."""

    # Per-request acceptance estimate: exponential average of accepted / proposed.
    EMA = 0.5
    INITIAL_ACCEPTANCE = 0.5
    MAX_COOLDOWN = 32
    MIN_ACCEPTANCE = 0.05
    MARGIN = 1.25
    MAX_THRESHOLD = 0.95

    def __init__(self, config: SpeculativeConfig, proposer: Proposer, max_model_len: int
                 ) -> None:
        self.config = config
        self.proposer = proposer
        self.max_model_len = max_model_len
        self.cost = StepCostModel()
        self.stats = SpecDecodeStats()

    def propose(self, running: Sequence[Request]) -> None:
        """Set spec_token_ids on the running requests that decode next step."""
        decoding = [r for r in running if r.num_tokens - r.num_computed_tokens == 1]
        for r in running:
            r.spec_token_ids = []
        cfg = self.config
        if not decoding or (cfg.disable_by_batch_size is not None
                            and len(running) >= cfg.disable_by_batch_size):
            return
        chosen, num = [], []
        threshold = self.threshold(len(decoding)) if cfg.adaptive else 0.0
        for r in decoding:
            k = min(cfg.num_speculative_tokens, r.max_tokens - r.num_output_tokens - 1,
                    self.max_model_len - r.num_tokens - 1)
            if k <= 0 or (cfg.adaptive and not self._wants_drafts(r, threshold)):
                continue
            chosen.append(r)
            num.append(k)
        if not chosen:
            return
        for r, drafts in zip(chosen, self.proposer.propose(chosen, num)):
            r.spec_token_ids = drafts

    def _wants_drafts(self, request: Request, threshold: float) -> bool:
        if request.spec_cooldown is not None:
            left, length = request.spec_cooldown
            if left > 0:
                request.spec_cooldown = (left - 1, length)
                return False
            return True  # a probe after the cooldown
        acceptance = request.spec_acceptance
        return (self.INITIAL_ACCEPTANCE if acceptance is None else acceptance) >= threshold

    def threshold(self, num_decoding: int) -> float:
        """The acceptance rate a request's drafts must keep for drafting to pay at this
        batch size: the step's per-token share of time (break-even), with a MARGIN so that
        estimation noise does not turn into a slowdown; at least MIN_ACCEPTANCE."""
        share = self.cost.token_share(num_decoding)
        return max(min(self.MARGIN * share, self.MAX_THRESHOLD), self.MIN_ACCEPTANCE)

    def observe_step(self, num_tokens: int, forward_seconds: float) -> None:
        self.cost.observe(num_tokens, forward_seconds)

    def record(self, requests: Sequence[Request], num_drafts: np.ndarray,
               accepted: np.ndarray) -> None:
        """After verification: statistics and each request's acceptance estimate."""
        self.stats.record(num_drafts, accepted)
        if not self.config.adaptive:
            return
        threshold = self.threshold(len(requests))
        for r, k, a in zip(requests, num_drafts.tolist(), accepted.tolist()):
            if k == 0:
                continue
            before = self.INITIAL_ACCEPTANCE if r.spec_acceptance is None else r.spec_acceptance
            est = (1 - self.EMA) * before + self.EMA * (a / k)
            r.spec_acceptance = est
            if est < threshold:
                # Mostly rejected: skip drafting for a while, longer each time it repeats,
                # then probe once (starting from the threshold, so a good probe resumes).
                length = 1 if r.spec_cooldown is None else r.spec_cooldown[1]
                r.spec_cooldown = (length, min(2 * length, self.MAX_COOLDOWN))
                r.spec_acceptance = threshold
            else:
                r.spec_cooldown = None

    def forget(self, request_ids: Sequence[str]) -> None:
        if request_ids:
            self.proposer.forget(request_ids)

    def shutdown(self) -> None:
        self.proposer.shutdown()
