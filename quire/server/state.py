"""Server state and OpenAI-style errors, shared by the app and the handlers.

The handlers never touch the LLMEngine (only the engine thread does): they read the
immutable facts the StreamingEngine captured at start (model info, prompt limits) and tokenize
on one worker thread of their own, off the event loop.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

from fastapi.responses import JSONResponse

from quire.server.async_engine import StreamingEngine
from quire.server.tool_parsers import ToolParser
from quire.tokenizer import HFTokenizer

T = TypeVar("T")


class APIError(Exception):
    def __init__(self, status: int, message: str, type_: str = "invalid_request_error",
                 param: str | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.type, self.param = status, message, type_, param


def error_body(status: int, message: str, type_: str, param: str | None = None) -> dict:
    return {"object": "error",
            "error": {"message": message, "type": type_, "param": param, "code": status}}


def error_response(status: int, message: str, type_: str = "invalid_request_error",
                   param: str | None = None) -> JSONResponse:
    return JSONResponse(error_body(status, message, type_, param), status_code=status)


@dataclass
class ServerState:
    engine: StreamingEngine
    tokenizer: HFTokenizer  # the handlers' own copy, used only on tokenizer_thread
    model_name: str
    tokenizer_thread: concurrent.futures.ThreadPoolExecutor
    # A lower bound on characters per token is unknowable, but no token spans more than
    # max_token_chars characters: a text longer than that many per allowed token cannot fit.
    max_token_chars: int
    tool_parser: ToolParser  # --tool-call-parser: reads tool calls out of chat outputs

    @property
    def max_model_len(self) -> int:
        return self.engine.limits.max_model_len

    async def off_loop(self, fn: Callable[..., T], *args: Any) -> T:
        """Run tokenizer work on the tokenizer thread; the event loop keeps serving."""
        return await asyncio.get_running_loop().run_in_executor(self.tokenizer_thread, fn,
                                                                *args)

    def check_model(self, model: str | None) -> None:
        if model is not None and model != self.model_name:
            raise APIError(404, f"The model `{model}` does not exist; this server serves "
                                f"`{self.model_name}` (see /v1/models).", "not_found_error",
                           "model")

    def check_text_length(self, num_chars: int) -> None:
        """Reject, before tokenizing, a text whose length alone proves it cannot fit."""
        if num_chars > 2 * self.max_token_chars * self.max_model_len:
            raise APIError(400, f"the prompt has {num_chars} characters, far more than this "
                                f"model's maximum context of {self.max_model_len} tokens can "
                                "hold; shorten the prompt", param="prompt")

    def check_prompt(self, prompt_ids: list[int], max_tokens: int | None) -> None:
        if not prompt_ids:
            raise APIError(400, "prompt is empty: give at least one token", param="prompt")
        try:
            self.engine.limits.check_token_ids(prompt_ids)
        except ValueError as exc:
            raise APIError(400, str(exc), param="prompt") from exc
        problem = self.engine.limits.why_not_fit(len(prompt_ids), max_tokens)
        if problem is not None:
            raise APIError(400, problem, param="prompt")
