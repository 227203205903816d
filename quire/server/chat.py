"""/v1/chat/completions: the chat template (with tools), whole responses and SSE streams,
and OpenAI tool calls (parsed by the --tool-call-parser; forced by a grammar when
tool_choice is "required" or names a function)."""

from __future__ import annotations

import dataclasses
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

from quire.core.outputs import CompletionOutput
from quire.core.sampling_params import SamplingParams
from quire.server.handlers import (
    Sent,
    chat_logprobs,
    check_constraint,
    collect,
    event,
    merge,
    raise_if_error,
    sse,
    usage,
)
from quire.server.protocol import ChatCompletionRequest, ChatMessage
from quire.server.state import APIError, ServerState, error_body
from quire.server.tool_parsers import ToolCall, ToolParser, held_back


async def chat_prompt_ids(state: ServerState, messages: list[ChatMessage],
                          add_generation_prompt: bool,
                          tools: list[dict[str, Any]] | None = None) -> list[int]:
    """The chat template applied and tokenized on the tokenizer thread."""
    conversation = [m.for_template() for m in messages]
    state.check_text_length(sum(len(m["content"]) for m in conversation))
    return await state.off_loop(state.tokenizer.apply_chat_template, conversation,
                                add_generation_prompt, None, tools)


def _tools(req: ChatCompletionRequest, params: SamplingParams, parser: ToolParser
           ) -> tuple[list[dict[str, Any]] | None, SamplingParams]:
    """(the tools the template sees, params with a forcing grammar when a call is required).
    tool_choice "none" hides the tools; "auto" (the default with tools) lets the model
    choose; "required" or a named function constrain the output to such calls."""
    choice = req.tool_choice
    if not req.tools:
        if choice not in (None, "none"):
            raise APIError(400, "tool_choice needs tools", param="tool_choice")
        return None, params
    tools = [t.model_dump(exclude_none=True) for t in req.tools]
    if choice == "none":
        return None, params
    forced = None
    if choice == "required":
        forced = tools
    elif choice is not None and choice != "auto":
        forced = [t for t in tools if t["function"]["name"] == choice.function.name]
        if not forced:
            raise APIError(400, f"tool_choice names {choice.function.name!r}, which is not "
                                "among the tools", param="tool_choice")
    if forced is not None:
        if params.structured_outputs is not None:
            raise APIError(400, "a required tool call cannot be combined with "
                                "response_format / structured_outputs", param="tool_choice")
        params = dataclasses.replace(params, structured_outputs=parser.constraint(forced))
    if parser.keeps_special_tokens:
        params = dataclasses.replace(params, skip_special_tokens=False)
    return tools, params


async def chat_completions(state: ServerState, req: ChatCompletionRequest):
    state.check_model(req.model)
    max_tokens = req.max_completion_tokens or req.max_tokens
    params = req.sampling_params(max_tokens, req.num_logprobs())
    tools, params = _tools(req, params, state.tool_parser)
    await check_constraint(state, params)
    ids = await chat_prompt_ids(state, req.messages, req.add_generation_prompt, tools)
    state.check_prompt(ids, max_tokens)
    rid = f"chatcmpl-{uuid.uuid4().hex}"
    gen = state.engine.generate(rid, ids, params)
    created = int(time.time())
    parser = state.tool_parser if tools else None
    if req.stream:
        return sse(_chat_stream(state, req, rid, created, gen, params, parser))
    (final,) = await collect([gen])
    raise_if_error(final)
    choices = []
    for c in final.outputs:
        message, finish = _message(c, parser)
        choices.append({"index": c.index, "message": message,
                        "logprobs": {"content": chat_logprobs(c, 0)} if req.logprobs else None,
                        "finish_reason": finish, "stop_reason": c.stop_reason})
    return {"id": rid, "object": "chat.completion", "created": created,
            "model": state.model_name, "choices": choices, "usage": usage([final])}


def _message(c: CompletionOutput, parser: ToolParser | None
             ) -> tuple[dict[str, Any], str | None]:
    """The assistant message and finish reason ("tool_calls" when the model called)."""
    calls: list[ToolCall] = []
    content = c.text
    if parser is not None:
        content, calls = parser.extract(c.text)
    if not calls:
        return {"role": "assistant", "content": c.text}, c.finish_reason
    return ({"role": "assistant", "content": content or None,  # OpenAI: null beside calls
             "tool_calls": [call.as_openai() for call in calls]}, "tool_calls")


async def _chat_stream(state, req, rid, created, gen, params,
                       parser: ToolParser | None) -> AsyncIterator[str]:
    head = {"id": rid, "object": "chat.completion.chunk", "created": created,
            "model": state.model_name}

    def chunk(index: int, delta: dict, finish: str | None = None, logprobs=None,
              stop_reason=None) -> str:
        choice = {"index": index, "delta": delta, "logprobs": logprobs, "finish_reason": finish}
        if finish is not None:
            choice["stop_reason"] = stop_reason
        return event({**head, "choices": [choice]})

    for k in range(params.n):
        yield chunk(k, {"role": "assistant", "content": ""})
    sent: dict[int, Sent] = {}
    final = None
    async for _, out in merge([gen]):
        if out.error:
            yield event(error_body(400, out.error, "invalid_request_error"))
            continue
        for c in out.outputs:
            s = sent.setdefault(c.index, Sent())
            if s.finished:
                continue
            # With tools, text that may be a tool call waits until the output is complete.
            visible = held_back(parser, c.text) if parser is not None and not c.finished \
                else len(c.text)
            delta = c.text[s.text:visible] if visible > s.text else ""
            logprobs = {"content": chat_logprobs(c, s.tokens)} if req.logprobs else None
            calls: list[ToolCall] = []
            if c.finished and parser is not None:
                content, calls = parser.extract(c.text)
                delta = content[s.text:] if calls else delta
            if delta or (logprobs and logprobs["content"]):
                yield chunk(c.index, {"content": delta}, logprobs=logprobs)
            s.text, s.tokens, s.finished = max(s.text, visible), len(c.token_ids), c.finished
            for i, call in enumerate(calls):
                yield chunk(c.index, {"tool_calls": [{
                    "index": i, "id": call.id, "type": "function",
                    "function": {"name": call.name, "arguments": ""}}]})
                yield chunk(c.index, {"tool_calls": [{
                    "index": i, "function": {"arguments": call.arguments}}]})
            if c.finished:
                yield chunk(c.index, {}, "tool_calls" if calls else c.finish_reason,
                            stop_reason=c.stop_reason)
        final = out
    if req.include_usage and final is not None:
        yield event({**head, "choices": [], "usage": usage([final])})
    yield "data: [DONE]\n\n"
