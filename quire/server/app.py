"""The FastAPI application: routes, error mapping, the body-size cap and API-key checks."""

from __future__ import annotations

import concurrent.futures
import copy
import json

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, PlainTextResponse, Response
from starlette.exceptions import HTTPException as StarletteHTTPException

from quire import __version__
from quire.server import chat, handlers
from quire.server.async_engine import EngineFailure, EngineOverloaded, StreamingEngine
from quire.server.guards import ApiKeyGuard, BodySizeLimit
from quire.server.protocol import (
    ChatCompletionRequest,
    CompletionRequest,
    DetokenizeRequest,
    TokenizeRequest,
)
from quire.server.state import APIError, ServerState, error_response
from quire.server.tool_parsers import get_parser

DEFAULT_MAX_REQUEST_BYTES = 8 << 20


def build_app(engine: StreamingEngine, model_name: str, *, api_key: str | None = None,
              max_request_bytes: int = DEFAULT_MAX_REQUEST_BYTES,
              tool_call_parser: str = "hermes") -> FastAPI:
    """The OpenAI-compatible app over a running StreamingEngine (an AsyncEngine, or a
    DataParallelEngine of replicas). api_key: every /v1/* route then requires
    `Authorization: Bearer <api_key>`. max_request_bytes: larger bodies get 413 before
    they are read. tool_call_parser: the tool-call format of the model's chat template
    (quire.server.tool_parsers.PARSERS)."""
    app = FastAPI(title="quire", version=__version__)
    tokenizer = copy.copy(engine.tokenizer)
    tokenizer.hf = copy.deepcopy(engine.tokenizer.hf)  # Rust tokenizers: one per thread
    vocab = tokenizer.hf.get_vocab()
    state = ServerState(engine, tokenizer, model_name,
                        concurrent.futures.ThreadPoolExecutor(1, "quire-tokenizer"),
                        max((len(t) for t in vocab), default=1), get_parser(tool_call_parser))
    app.state.quire = state
    # Outermost first: the size cap runs before anything reads the body.
    if api_key:
        app.add_middleware(ApiKeyGuard, api_key=api_key)
    app.add_middleware(BodySizeLimit, max_bytes=max_request_bytes)

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

    @app.exception_handler(EngineFailure)
    async def _failed(_: Request, exc: EngineFailure) -> JSONResponse:
        return error_response(503, str(exc), "service_unavailable")

    @app.get("/health")
    async def health() -> Response:
        if engine.failure is not None:
            return error_response(503, engine.failure, "service_unavailable")
        return Response(status_code=200)

    @app.get("/version")
    async def version() -> dict:
        return {"version": __version__}

    @app.get("/v1/models")
    async def models() -> dict:
        return {"object": "list", "data": [{
            "id": model_name, "object": "model", "created": 0, "owned_by": "quire",
            "max_model_len": state.max_model_len,
            "vocab_size": engine.model_info.vocab_size}]}

    @app.get("/metrics")
    async def metrics() -> PlainTextResponse:
        return PlainTextResponse(engine.metrics.render(),
                                 media_type="text/plain; version=0.0.4")

    @app.post("/v1/completions")
    async def completions(req: CompletionRequest, raw: Request):
        return await handlers.completions(state, req)

    @app.post("/v1/chat/completions")
    async def chat_completions(req: ChatCompletionRequest, raw: Request):
        return await chat.chat_completions(state, req)

    @app.post("/tokenize")
    async def tokenize(req: TokenizeRequest) -> dict:
        state.check_model(req.model)
        if (req.prompt is None) == (req.messages is None):
            raise APIError(400, "give exactly one of `prompt` or `messages`")
        if req.prompt is not None:
            ids = await handlers.prompt_ids(state, req.prompt)
        else:
            ids = await chat.chat_prompt_ids(state, req.messages, req.add_generation_prompt)
        return {"tokens": ids, "count": len(ids), "max_model_len": state.max_model_len}

    @app.post("/detokenize")
    async def detokenize(req: DetokenizeRequest) -> dict:
        state.check_model(req.model)
        try:
            engine.limits.check_token_ids(req.tokens, "detokenize")
        except ValueError as exc:
            raise APIError(400, str(exc), param="tokens") from exc
        text = await state.off_loop(state.tokenizer.decode, req.tokens, False)
        return {"prompt": text}

    return app


def _describe_validation(exc: RequestValidationError) -> str:
    problems = []
    for err in exc.errors():
        where = ".".join(str(p) for p in err.get("loc", ()) if p != "body")
        if err.get("type") == "json_invalid":
            return "the request body is not valid JSON"
        problems.append(f"{where or 'body'}: {err.get('msg')}")
    return "invalid request: " + "; ".join(problems[:5]) if problems else json.dumps(exc.errors())
