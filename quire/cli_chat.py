"""`quire chat`: an interactive terminal chat with a model (offline, streamed)."""

from __future__ import annotations

import argparse
import sys

from quire.core.config import EngineConfig
from quire.core.sampling_params import SamplingParams

HELP = "Type a message; /reset forgets the conversation, /exit (or Ctrl-D) quits."


def run_chat(args: argparse.Namespace, config: EngineConfig) -> int:
    from quire.llm import LLM

    llm = LLM(**{f: getattr(config, f) for f in EngineConfig.field_names()})
    params = SamplingParams(temperature=args.temperature, top_p=args.top_p,
                            max_tokens=args.max_tokens)
    system = [{"role": "system", "content": args.system}] if args.system else []
    history = list(system)
    print(HELP, flush=True)
    while True:
        try:
            line = input("> ")
        except (EOFError, KeyboardInterrupt):
            print()
            return 0
        text = line.strip()
        if not text:
            continue
        if text in ("/exit", "/quit"):
            return 0
        if text == "/reset":
            history = list(system)
            print("(conversation cleared)")
            continue
        history.append({"role": "user", "content": text})
        reply = _stream_reply(llm, history, params)
        history.append({"role": "assistant", "content": reply})


def _stream_reply(llm, history: list[dict], params: SamplingParams) -> str:
    engine = llm.engine
    prompt = engine.tokenizer.apply_chat_template(history)
    request_id = engine.add_request(prompt, params)
    printed, text = 0, ""
    try:
        while engine.has_unfinished_requests():
            for out in engine.step():
                if out.request_id != request_id:
                    continue
                if out.error:
                    print(f"[error: {out.error}]")
                    return ""
                text = out.outputs[0].text
                sys.stdout.write(text[printed:])
                sys.stdout.flush()
                printed = len(text)
    except KeyboardInterrupt:
        engine.abort_request(request_id)
        print(" [interrupted]")
        return text
    print()
    return text
