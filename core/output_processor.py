"""From sampled tokens to RequestOutputs: detokenizing, stop strings, logprobs, and the
gathering of parallel-sampling children into their parent's output."""

from __future__ import annotations

from collections.abc import Iterable

from quire.core.detokenizer import Tokenizer
from quire.core.executor import ModelOutput
from quire.core.outputs import CompletionOutput, Logprob, RequestMetrics, RequestOutput
from quire.core.parallel_sampling import Child, ParentRequest
from quire.core.request import Request, RequestStatus


class OutputProcessor:
    """Owns every unfinished parent request and the child -> parent index."""

    def __init__(self, tokenizer: Tokenizer) -> None:
        self.tokenizer = tokenizer
        self._parents: dict[str, ParentRequest] = {}
        self._child_to_parent: dict[str, tuple[str, int]] = {}

    def __contains__(self, request_id: str) -> bool:
        return request_id in self._parents

    def __len__(self) -> int:
        return len(self._parents)

    def get(self, request_id: str) -> ParentRequest:
        return self._parents[request_id]

    def add(self, parent: ParentRequest) -> None:
        self._parents[parent.request_id] = parent
        if parent.error is None:
            for i, child in enumerate(parent.children):
                self._child_to_parent[child.request.request_id] = (parent.request_id, i)

    def remove(self, request_id: str) -> ParentRequest | None:
        parent = self._parents.pop(request_id, None)
        if parent is not None:
            for child in parent.children:
                self._child_to_parent.pop(child.request.request_id, None)
        return parent

    def parent_of(self, child_request_id: str) -> ParentRequest:
        return self._parents[self._child_to_parent[child_request_id][0]]

    def process(self, updated: Iterable[Request], counts: Iterable[int], rows: Iterable[int],
                model_out: ModelOutput, touched: dict[str, ParentRequest]) -> list[str]:
        """Take in the new tokens of each updated request: counts[i] tokens, whose logprobs
        are in model_out's rows rows[i]:rows[i] + counts[i]. Detokenizes, applies stop
        strings (a stop string inside a run of several tokens drops the tokens after it).
        Returns the child ids a stop string ended (the caller finishes them); every parent
        with news lands in touched."""
        stopped: list[str] = []
        for request, count, row in zip(updated, counts, rows):
            parent_id, index = self._child_to_parent[request.request_id]
            parent = self._parents[parent_id]
            child = parent.children[index]
            new_ids = request.output_token_ids[-count:]
            stop = None
            for i, token_id in enumerate(new_ids):
                if child.logprobs is not None:
                    self._append_logprobs(child, model_out, row + i, token_id)
                stop = child.detokenizer.update((token_id,))
                if stop is not None:
                    request.discard_last_tokens(count - 1 - i)
                    break
            if stop is not None:
                request.stop_reason = stop
                if request.is_finished:  # also hit a length limit: the stop string wins
                    request.status = RequestStatus.FINISHED_STOPPED
                else:
                    stopped.append(request.request_id)
            touched[parent_id] = parent
        return stopped

    def _append_logprobs(self, child: Child, out: ModelOutput, row: int, token_id: int
                         ) -> None:
        assert out.sampled_logprobs is not None and child.logprobs is not None
        k = child.request.sampling_params.logprobs or 0
        entry = {token_id: Logprob(float(out.sampled_logprobs[row]))}
        if k and out.top_token_ids is not None and out.top_logprobs is not None:
            for rank, (tid, lp) in enumerate(zip(out.top_token_ids[row, :k].tolist(),
                                                 out.top_logprobs[row, :k].tolist()), start=1):
                if tid == token_id:
                    entry[tid].rank = rank
                else:
                    entry[tid] = Logprob(lp, rank)
        for tid, lp in entry.items():
            lp.decoded_token = self.tokenizer.decode([tid], skip_special_tokens=False)
        child.logprobs.append(entry)
        child.cumulative_logprob = (child.cumulative_logprob or 0.0) + entry[token_id].logprob

    def make_output(self, parent: ParentRequest) -> RequestOutput:
        """The parent's cumulative output so far (finished when every child is)."""
        completions = []
        for i, child in enumerate(parent.children):
            request = child.request
            done = request.is_finished
            if done:
                child.detokenizer.finish()
            completions.append(CompletionOutput(
                index=i,
                text=child.detokenizer.visible_text(done),
                token_ids=list(request.output_token_ids),
                finish_reason=request.status.finish_reason,
                stop_reason=request.stop_reason,
                logprobs=child.logprobs,
                cumulative_logprob=child.cumulative_logprob,
            ))
        metrics = _metrics(parent)
        return RequestOutput(
            request_id=parent.request_id,
            prompt=parent.prompt,
            prompt_token_ids=parent.prompt_token_ids,
            outputs=completions,
            finished=parent.is_finished,
            metrics=metrics,
            error=parent.error or next((c.request.error for c in parent.children
                                        if c.request.error), None),
            num_cached_tokens=metrics.num_cached_tokens,
        )


def _metrics(parent: ParentRequest) -> RequestMetrics:
    requests = [c.request for c in parent.children]
    first = requests[0]
    return RequestMetrics(
        arrival_time=parent.arrival_time,
        first_scheduled_time=first.first_scheduled_time,
        first_token_time=min((r.first_token_time for r in requests
                              if r.first_token_time is not None), default=None),
        finished_time=max(r.finished_time or 0.0 for r in requests)
        if parent.is_finished else None,
        num_prompt_tokens=len(parent.prompt_token_ids),
        num_cached_tokens=max(first.num_cached_tokens, 0),
        num_generation_tokens=sum(r.num_output_tokens for r in requests),
        num_preemptions=sum(r.num_preemptions for r in requests),
    )
