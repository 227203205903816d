"""`quire serve`: build the engine, wrap it, run uvicorn."""

from __future__ import annotations

import argparse
import dataclasses
import logging
import os

from quire.core.config import EngineConfig

logger = logging.getLogger(__name__)


def served_name(model_path: str) -> str:
    base = os.path.basename(os.path.normpath(model_path))
    return base[: -len(".gguf")] if base.endswith(".gguf") else base


def run_server(args: argparse.Namespace, config: EngineConfig) -> int:
    import uvicorn

    from quire.default_model import resolve_model
    from quire.engine_factory import create_engine
    from quire.server.app import build_app
    from quire.server.async_engine import AsyncEngine, StreamingEngine

    if args.model_pos and args.model and args.model_pos != args.model:
        raise ValueError("give the model once: positionally or with --model")
    config = dataclasses.replace(config, model=resolve_model(args.model_pos or args.model))
    if args.max_waiting_requests is not None and args.max_waiting_requests < 0:
        raise ValueError("--max-waiting-requests must be >= 0")
    if args.max_request_bytes <= 0:
        raise ValueError("--max-request-bytes must be a positive number of bytes")
    api_key = args.api_key or os.environ.get("QUIRE_API_KEY") or None
    dp = getattr(args, "data_parallel_size", 1)
    if dp < 1:
        raise ValueError("--data-parallel-size must be at least 1")
    if dp > 1:
        from quire.server.data_parallel import DataParallelEngine

        engine: StreamingEngine = DataParallelEngine(config, dp, args.max_waiting_requests)
    else:
        engine = AsyncEngine(create_engine(config), args.max_waiting_requests)
    app = build_app(engine, args.served_model_name or served_name(config.model),
                    api_key=api_key, max_request_bytes=args.max_request_bytes,
                    tool_call_parser=args.tool_call_parser)
    logger.info("serving %s at http://%s:%d/v1%s", config.model, args.host, args.port,
                " (API key required)" if api_key else "")
    try:
        uvicorn.run(app, host=args.host, port=args.port, log_level="warning")
    finally:
        app.state.quire.tokenizer_thread.shutdown(wait=False, cancel_futures=True)
        engine.shutdown()
    return 0
