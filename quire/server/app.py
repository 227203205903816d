"""The FastAPI application: routes, OpenAI-style errors, and server state."""

from __future__ import annotations

import copy
import json
from dataclasses import dataclass

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, PlainTextResponse, Response
from starlette.exceptions import HTTPException as StarletteHTTPException

from quire.server.async_engine import AsyncEngine, EngineOverloaded
from quire.server.protocol import (
    ChatCompletionRequest,
    CompletionRequest,
    DetokenizeRequest,
    TokenizeRequest,
)
from quire.tokenizer import HFTokenizer


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
    engine: AsyncEngine
    tokenizer: HFTokenizer  # the handlers' own copy; the engine thread uses the original
    model_name: str
    max_model_len: int

    def check_model(self, model: str | None) -> None:
        if model is not None and model != self.model_name:
            raise APIError(404, f"The model `{model}` does not exist; this server serves "
                                f"`{self.model_name}` (see /v1/models).", "not_found_error",
                           "model")

    def check_prompt(self, prompt_ids: list[int], max_tokens: int | None) -> None:
        vocab = self.engine.engine.model_info.vocab_size
        if any(not 0 <= t < vocab for t in prompt_ids):
            raise APIError(400, f"prompt token ids must be in [0, {vocab})", param="prompt")
        problem = self.engine.engine.check_prompt_fits(len(prompt_ids))
        if problem is None and max_tokens is not None and \
                len(prompt_ids) + max_tokens > self.max_model_len:
            problem = (f"This model's maximum context length is {self.max_model_len} tokens; "
                       f"the prompt has {len(prompt_ids)} and max_tokens asks for {max_tokens}"
                       ". Shorten the prompt or lower max_tokens.")
        if problem is not None:
            raise APIError(400, problem, param="prompt")


def build_app(engine: AsyncEngine, model_name: str) -> FastAPI:
    from quire import __version__
    from quire.server import handlers

    app = FastAPI(title="quire", version=__version__)
    tokenizer = copy.copy(engine.engine.tokenizer)
    tokenizer.hf = copy.deepcopy(engine.engine.tokenizer.hf)  # Rust tokenizers: one per thread
    state = ServerState(engine, tokenizer, model_name, engine.engine.max_model_len)
    app.state.quire = state

    @app.exception_handler(APIError)
    async def _api_error(_: Request, exc: APIError) -> JSONResponse:
        return error_response(exc.status, exc.message, exc.type, exc.param)

    @app.exception_handler(RequestValidationError)
    async def _validation(_: Request, exc: RequestValidationError) -> JSONResponse:
        return error_response(400, _describe_validation(exc))

    @app.exception_handler(StarletteHTTPException)
    async def _http(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        type_ = "not_found_error" if exc.status_code == 404 else "invalid_request_error"
        return error_response(exc.status_code, str(exc.detail), type_)

    @app.exception_handler(ValueError)
    async def _value(_: Request, exc: ValueError) -> JSONResponse:
        return error_response(400, str(exc))

    @app.exception_handler(EngineOverloaded)
    async def _overloaded(_: Request, exc: EngineOverloaded) -> JSONResponse:
        return error_response(503, str(exc), "service_unavailable")

    @app.get("/health")
    async def health() -> Response:
        return Response(status_code=200)

    @app.get("/version")
    async def version() -> dict:
        return {"version": __version__}

    @app.get("/v1/models")
    async def models() -> dict:
        return {"object": "list", "data": [{
            "id": model_name, "object": "model", "created": 0, "owned_by": "quire",
            "max_model_len": state.max_model_len,
            "vocab_size": engine.engine.model_info.vocab_size}]}

    @app.get("/metrics")
    async def metrics() -> PlainTextResponse:
        return PlainTextResponse(engine.metrics.render(),
                                 media_type="text/plain; version=0.0.4")

    @app.post("/v1/completions")
    async def completions(req: CompletionRequest, raw: Request):
        return await handlers.completions(state, req)

    @app.post("/v1/chat/completions")
    async def chat_completions(req: ChatCompletionRequest, raw: Request):
        return await handlers.chat_completions(state, req)

    @app.post("/tokenize")
    async def tokenize(req: TokenizeRequest) -> dict:
        state.check_model(req.model)
        if (req.prompt is None) == (req.messages is None):
            raise APIError(400, "give exactly one of `prompt` or `messages`")
        if req.prompt is not None:
            ids = state.tokenizer.encode(req.prompt)
        else:
            ids = handlers.chat_prompt_ids(state, req.messages, req.add_generation_prompt)
        return {"tokens": ids, "count": len(ids), "max_model_len": state.max_model_len}

    @app.post("/detokenize")
    async def detokenize(req: DetokenizeRequest) -> dict:
        state.check_model(req.model)
        vocab = engine.engine.model_info.vocab_size
        if any(not 0 <= t < vocab for t in req.tokens):
            raise APIError(400, f"token ids must be in [0, {vocab})", param="tokens")
        return {"prompt": state.tokenizer.decode(req.tokens, skip_special_tokens=False)}

    return app


def _describe_validation(exc: RequestValidationError) -> str:
    problems = []
    for err in exc.errors():
        where = ".".join(str(p) for p in err.get("loc", ()) if p != "body")
        if err.get("type") == "json_invalid":
            return "the request body is not valid JSON"
        problems.append(f"{where or 'body'}: {err.get('msg')}")
    return "invalid request: " + "; ".join(problems[:5]) if problems else json.dumps(exc.errors())
