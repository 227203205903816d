"""/v1/completions (whole responses and SSE streams) and what the chat handler shares with
it: constraint checks, prompt tokenizing, merging, SSE, usage and logprobs formatting."""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass

from fastapi.responses import StreamingResponse

from quire.core.outputs import CompletionOutput, RequestOutput
from quire.core.sampling_params import SamplingParams
from quire.server.async_engine import EngineFailure, EngineOverloaded
from quire.server.protocol import CompletionRequest
from quire.server.state import APIError, ServerState, error_body


@dataclass
class Sent:
    """How much of one choice a stream has already sent."""

    text: int = 0
    tokens: int = 0
    finished: bool = False


async def check_constraint(state: ServerState, params: SamplingParams) -> None:
    """Compile the request's output constraint now (cached for the engine): a bad schema or
    grammar is a 400 before anything is queued or streamed."""
    spec = params.structured_outputs
    if spec is None:
        return
    if state.engine.structured is None:
        raise APIError(400, "structured outputs are not available on this server")
    try:
        await state.off_loop(state.engine.structured.validate, spec)
    except ValueError as exc:
        raise APIError(400, f"invalid structured output constraint: {exc}",
                       param="response_format") from exc


async def prompt_ids(state: ServerState, prompt: str | list[int]) -> list[int]:
    """Token ids of one completions prompt; text is tokenized on the tokenizer thread."""
    if isinstance(prompt, list):
        return prompt
    state.check_text_length(len(prompt))
    return await state.off_loop(state.tokenizer.encode, prompt)


async def completions(state: ServerState, req: CompletionRequest):
    state.check_model(req.model)
    if req.best_of is not None and req.best_of != req.n:
        raise APIError(400, "best_of is only supported when it equals n", param="best_of")
    if req.suffix:
        raise APIError(400, "suffix is not supported", param="suffix")
    if req.echo and req.logprobs is not None:
        raise APIError(400, "echo with logprobs is not supported (no prompt logprobs)",
                       param="echo")
    params = req.sampling_params(req.max_tokens, req.logprobs)
    await check_constraint(state, params)
    raw_prompts = req.prompts()
    prompts = [await prompt_ids(state, p) for p in raw_prompts]
    for ids in prompts:
        state.check_prompt(ids, req.max_tokens)
    echoes = [p if isinstance(p, str) else await state.off_loop(state.tokenizer.decode, ids)
              for p, ids in zip(raw_prompts, prompts)] if req.echo else [""] * len(prompts)
    rid = f"cmpl-{uuid.uuid4().hex}"
    gens: list[AsyncIterator[RequestOutput]] = []
    try:
        for i, ids in enumerate(prompts):
            gens.append(state.engine.generate(f"{rid}-{i}", ids, params))
    except EngineOverloaded:  # nothing of this request may stay queued
        for i in range(len(gens)):
            state.engine.abort(f"{rid}-{i}")
        raise
    created = int(time.time())
    if req.stream:
        return sse(_completion_stream(state, req, rid, created, gens, echoes, params))
    finals = await collect(gens)
    choices = []
    for i, out in enumerate(finals):
        raise_if_error(out)
        echo = echoes[i]
        for c in out.outputs:
            choices.append({
                "index": i * params.n + c.index, "text": echo + c.text,
                "logprobs": _completion_logprobs(c, 0, 0) if req.logprobs
                is not None else None,
                "finish_reason": c.finish_reason, "stop_reason": c.stop_reason,
            })
    return {"id": rid, "object": "text_completion", "created": created,
            "model": state.model_name, "choices": choices, "usage": usage(finals)}


# -- streams -------------------------------------------------------------------------------
async def _completion_stream(state, req, rid, created, gens, echoes: list[str],
                             params: SamplingParams) -> AsyncIterator[str]:
    sent: dict[int, Sent] = {}
    finals: dict[int, RequestOutput] = {}
    head = {"id": rid, "object": "text_completion", "created": created,
            "model": state.model_name}
    if req.echo:
        for i, echo in enumerate(echoes):
            for k in range(params.n):
                yield event({**head, "choices": [{"index": i * params.n + k, "text": echo,
                                                   "logprobs": None, "finish_reason": None}]})
    async for i, out in merge(gens):
        if out.error:
            yield event(error_body(400, out.error, "invalid_request_error"))
            continue
        for c in out.outputs:
            index = i * params.n + c.index
            s = sent.setdefault(index, Sent())
            if s.finished:
                continue
            delta = c.text[s.text:]
            logprobs = _completion_logprobs(c, s.tokens, s.text) if req.logprobs \
                is not None else None
            if not delta and not c.finished and logprobs is None:
                continue
            s.text, s.tokens, s.finished = len(c.text), len(c.token_ids), c.finished
            yield event({**head, "choices": [{
                "index": index, "text": delta, "logprobs": logprobs,
                "finish_reason": c.finish_reason if c.finished else None,
                "stop_reason": c.stop_reason if c.finished else None}]})
        if out.finished:
            finals[i] = out
    if req.include_usage:
        yield event({**head, "choices": [], "usage": usage(list(finals.values()))})
    yield "data: [DONE]\n\n"


async def merge(gens: Sequence[AsyncIterator[RequestOutput]]
                 ) -> AsyncIterator[tuple[int, RequestOutput]]:
    """Interleave several requests' outputs as they come. If the consumer stops (client
    gone), the pumps are cancelled and each request is aborted by its generator."""
    if len(gens) == 1:
        async for out in gens[0]:
            yield 0, out
        return
    queue: asyncio.Queue = asyncio.Queue()
    done = object()

    async def pump(i: int, gen: AsyncIterator[RequestOutput]) -> None:
        try:
            async for out in gen:
                await queue.put((i, out))
        except Exception as exc:
            await queue.put((i, exc))
        finally:
            await queue.put((i, done))

    tasks = [asyncio.create_task(pump(i, g)) for i, g in enumerate(gens)]
    remaining = len(tasks)
    try:
        while remaining:
            i, item = await queue.get()
            if item is done:
                remaining -= 1
            elif isinstance(item, Exception):
                raise item
            else:
                yield i, item
    finally:
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


async def collect(gens: Sequence[AsyncIterator[RequestOutput]]) -> list[RequestOutput]:
    finals: list[RequestOutput | None] = [None] * len(gens)
    async for i, out in merge(gens):
        finals[i] = out
    return finals  # type: ignore[return-value]


def sse(events: AsyncIterator[str]) -> StreamingResponse:
    return StreamingResponse(_first_error_as_json(events), media_type="text/event-stream")


async def _first_error_as_json(events: AsyncIterator[str]) -> AsyncIterator[str]:
    try:
        async for e in events:
            yield e
    except (ValueError, EngineOverloaded, EngineFailure) as exc:
        if isinstance(exc, ValueError):
            yield event(error_body(400, str(exc), "invalid_request_error"))
        else:
            yield event(error_body(503, str(exc), "service_unavailable"))
        yield "data: [DONE]\n\n"


# -- formatting ----------------------------------------------------------------------------
def event(obj: dict) -> str:
    return f"data: {json.dumps(obj, ensure_ascii=False)}\n\n"


def raise_if_error(out: RequestOutput) -> None:
    if out.error:
        raise APIError(400, out.error)


def usage(finals: Sequence[RequestOutput]) -> dict:
    prompt = sum(len(o.prompt_token_ids) for o in finals)
    completion = sum(len(c.token_ids) for o in finals for c in o.outputs)
    return {"prompt_tokens": prompt, "completion_tokens": completion,
            "total_tokens": prompt + completion}


def _completion_logprobs(c: CompletionOutput, start: int, text_offset: int) -> dict | None:
    """OpenAI completions logprobs for tokens [start:], the first at text_offset."""
    if c.logprobs is None:
        return None
    tokens, token_lps, tops, offsets = [], [], [], []
    offset = text_offset
    for tid, entry in zip(c.token_ids[start:], c.logprobs[start:]):
        tok = entry[tid].decoded_token or ""
        tokens.append(tok)
        token_lps.append(entry[tid].logprob)
        tops.append({lp.decoded_token or "": lp.logprob for t, lp in entry.items()
                     if lp.rank is not None})
        offsets.append(offset)
        offset += len(tok)
    return {"tokens": tokens, "token_logprobs": token_lps, "top_logprobs": tops,
            "text_offset": offsets}


def chat_logprobs(c: CompletionOutput, start: int) -> list[dict]:
    if c.logprobs is None:
        return []
    content = []
    for tid, entry in zip(c.token_ids[start:], c.logprobs[start:]):
        tok = entry[tid].decoded_token or ""
        tops = sorted((lp for lp in entry.values() if lp.rank is not None),
                      key=lambda lp: lp.rank)
        content.append({
            "token": tok, "logprob": entry[tid].logprob, "bytes": list(tok.encode()),
            "top_logprobs": [{"token": lp.decoded_token or "", "logprob": lp.logprob,
                              "bytes": list((lp.decoded_token or "").encode())}
                             for lp in tops],
        })
    return content

