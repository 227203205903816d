"""The offline API: LLM(model=...).generate(prompts, sampling_params)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from quire.core.config import EngineConfig
from quire.core.outputs import RequestOutput
from quire.core.sampling_params import SamplingParams

Prompt = str | Sequence[int]
Message = dict[str, Any]


class LLM:
    """Offline batched generation.

    >>> llm = LLM(model="path/to/hf-folder", backend="cpu")
    >>> llm.generate(["Hello"], SamplingParams(max_tokens=8))[0].outputs[0].text

    Keyword arguments are EngineConfig fields (block_size, num_blocks, max_num_seqs, ...).
    """

    def __init__(self, model: str | None = None, **engine_args: Any) -> None:
        from quire.engine_factory import create_engine

        unknown = sorted(set(engine_args) - set(EngineConfig.field_names()))
        if unknown:
            raise TypeError(f"LLM() got unknown argument(s) {unknown}; valid engine arguments: "
                            f"{', '.join(n for n in EngineConfig.field_names() if n != 'model')}")
        self.config = EngineConfig(model=model, **engine_args)
        self.engine = create_engine(self.config)

    def get_tokenizer(self):
        return self.engine.tokenizer

    def generate(
        self,
        prompts: Prompt | Sequence[Prompt],
        sampling_params: SamplingParams | Sequence[SamplingParams] | None = None,
        use_tqdm: bool = True,
    ) -> list[RequestOutput]:
        """Generate for every prompt (text or token ids); outputs come back in input order."""
        prompt_list = _as_prompt_list(prompts)
        params = _as_params_list(sampling_params, len(prompt_list))
        ids = []
        try:
            for prompt, p in zip(prompt_list, params):
                ids.append(self.engine.add_request(prompt, p))
        except Exception:
            self.engine.abort_request(ids)
            raise
        return self._run(ids, use_tqdm)

    def chat(
        self,
        messages: list[Message] | list[list[Message]],
        sampling_params: SamplingParams | Sequence[SamplingParams] | None = None,
        use_tqdm: bool = True,
        add_generation_prompt: bool = True,
        chat_template: str | None = None,
    ) -> list[RequestOutput]:
        """Generate replies to one conversation or a list of them, using the tokenizer's
        chat template."""
        if not messages:
            raise ValueError("messages is empty")
        conversations = [messages] if isinstance(messages[0], dict) else messages
        prompts = [self.engine.tokenizer.apply_chat_template(
            list(c), add_generation_prompt=add_generation_prompt, chat_template=chat_template)
            for c in conversations]
        return self.generate(prompts, sampling_params, use_tqdm)

    def _run(self, request_ids: list[str], use_tqdm: bool) -> list[RequestOutput]:
        finished: dict[str, RequestOutput] = {}
        bar = None
        if use_tqdm:
            from tqdm.auto import tqdm

            bar = tqdm(total=len(request_ids), desc="Generating", unit="req", dynamic_ncols=True)
        try:
            while self.engine.has_unfinished_requests():
                for out in self.engine.step():
                    if out.finished:
                        finished[out.request_id] = out
                        if bar is not None:
                            bar.update(1)
        except BaseException:
            self.engine.abort_request(request_ids)
            raise
        finally:
            if bar is not None:
                bar.close()
        return [finished[i] for i in request_ids]


def _as_prompt_list(prompts: Prompt | Sequence[Prompt]) -> list[Prompt]:
    if isinstance(prompts, str):
        return [prompts]
    prompts = list(prompts)
    if prompts and all(isinstance(t, int) for t in prompts):
        return [prompts]  # one prompt given as token ids
    for p in prompts:
        if not isinstance(p, (str, list, tuple)):
            raise TypeError(f"each prompt must be a string or a list of token ids, got "
                            f"{type(p).__name__}")
    return prompts


def _as_params_list(params: SamplingParams | Sequence[SamplingParams] | None,
                    num_prompts: int) -> list[SamplingParams]:
    if params is None:
        return [SamplingParams()] * num_prompts
    if isinstance(params, SamplingParams):
        return [params] * num_prompts
    params = list(params)
    if len(params) != num_prompts:
        raise ValueError(f"got {len(params)} sampling params for {num_prompts} prompts; "
                         "pass one, or one per prompt")
    return params
