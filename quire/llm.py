"""The offline API: LLM(model=...).generate(prompts, sampling_params)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from quire.core.config import EngineConfig
from quire.core.outputs import RequestOutput
from quire.core.sampling_params import SamplingParams

# vLLM's prompt forms: text, token ids, {"prompt": text} or {"prompt_token_ids": ids}
# (TextPrompt / TokensPrompt), either dict optionally with "cache_salt".
Prompt = str | Sequence[int] | dict[str, Any]
Message = dict[str, Any]
_PROMPT_KEYS = {"prompt", "prompt_token_ids", "cache_salt"}


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
        """Generate for every prompt (text, token ids, or vLLM's {"prompt": ...} /
        {"prompt_token_ids": [...]} dicts); outputs come back in input order."""
        prompt_list = [_unpack_prompt(p) for p in _as_prompt_list(prompts)]
        params = _as_params_list(sampling_params, len(prompt_list))
        ids = []
        try:
            for (prompt, salt), p in zip(prompt_list, params):
                ids.append(self.engine.add_request(prompt, p, cache_salt=salt))
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
    if isinstance(prompts, (str, dict)):
        return [prompts]
    prompts = list(prompts)
    if prompts and all(isinstance(t, int) for t in prompts):
        return [prompts]  # one prompt given as token ids
    for p in prompts:
        if not isinstance(p, (str, list, tuple, dict)):
            raise TypeError(f"each prompt must be a string, a list of token ids or a dict "
                            f"with 'prompt' or 'prompt_token_ids', got {type(p).__name__}")
    return prompts


def _unpack_prompt(prompt: Prompt) -> tuple[str | Sequence[int], str | None]:
    """(text or token ids, cache salt) of one prompt in any accepted form."""
    if not isinstance(prompt, dict):
        return prompt, None  # type: ignore[return-value]
    unknown = sorted(set(prompt) - _PROMPT_KEYS)
    if unknown:
        raise ValueError(f"prompt dict has unsupported key(s) {unknown}; quire accepts "
                         f"{sorted(_PROMPT_KEYS)} (text-only models)")
    if ("prompt" in prompt) == ("prompt_token_ids" in prompt):
        raise ValueError("a prompt dict needs exactly one of 'prompt' (text) or "
                         "'prompt_token_ids' (a list of token ids)")
    text_or_ids = prompt["prompt"] if "prompt" in prompt else prompt["prompt_token_ids"]
    if "prompt" in prompt and not isinstance(text_or_ids, str):
        raise TypeError("'prompt' must be a string; pass token ids as 'prompt_token_ids'")
    if "prompt_token_ids" in prompt and not isinstance(text_or_ids, (list, tuple)):
        raise TypeError("'prompt_token_ids' must be a list of ints")
    return text_or_ids, prompt.get("cache_salt")


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
