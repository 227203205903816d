"""`quire generate`: prompts in, completions out (optionally streamed)."""

from __future__ import annotations

import argparse
import sys

from quire.core.config import EngineConfig
from quire.core.sampling_params import SamplingParams


def _read_prompts(args: argparse.Namespace) -> list[str]:
    prompts = list(args.prompt)
    if args.prompts_file:
        with open(args.prompts_file, encoding="utf-8") as f:
            prompts += [line.rstrip("\n") for line in f if line.strip()]
    if not prompts:
        raise ValueError("no prompts: pass --prompt TEXT (repeatable) or --prompts-file FILE")
    return prompts


def run_generate(args: argparse.Namespace, config: EngineConfig) -> int:
    from quire.llm import LLM

    prompts = _read_prompts(args)
    params = SamplingParams(n=args.n, temperature=args.temperature, top_p=args.top_p,
                            top_k=args.top_k, max_tokens=args.max_tokens, stop=args.stop)
    llm = LLM(**{f: getattr(config, f) for f in EngineConfig.field_names()})
    tokenizer = llm.get_tokenizer()
    inputs = [tokenizer.apply_chat_template([{"role": "user", "content": p}])
              if args.chat else p for p in prompts]
    if args.stream:
        for prompt, inp in zip(prompts, inputs):
            print(f"### {prompt}")
            _stream_one(llm, inp, params)
        return 0
    outputs = llm.generate(inputs, params, use_tqdm=sys.stderr.isatty())
    for prompt, out in zip(prompts, outputs):
        print(f"### {prompt}")
        for c in out.outputs:
            print(f"[{c.index}] {c.text!r} (finish: {c.finish_reason}, {len(c.token_ids)} tokens)")
        if out.error:
            print(f"error: {out.error}")
    return 0


def _stream_one(llm, prompt, params: SamplingParams) -> None:
    engine = llm.engine
    request_id = engine.add_request(prompt, params)
    printed = 0
    while engine.has_unfinished_requests():
        for out in engine.step():
            if out.request_id != request_id:
                continue
            text = out.outputs[0].text
            sys.stdout.write(text[printed:])
            sys.stdout.flush()
            printed = len(text)
            if out.finished:
                sys.stdout.write(f"\n(finish: {out.outputs[0].finish_reason})\n")
