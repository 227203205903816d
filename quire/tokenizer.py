"""Tokenizers from HF model folders, behind the small interface the core uses."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any


class HFTokenizer:
    """Wraps a transformers tokenizer: encode, decode, eos and the chat template."""

    def __init__(self, tokenizer: Any) -> None:
        self.hf = tokenizer
        self.eos_token_id: int | None = tokenizer.eos_token_id
        self.vocab_size = len(tokenizer)
        # A fast tokenizer's Rust object decodes without transformers' per-call Python
        # (type checks over every id), which the detokenizer pays twice per token.
        self._rust = getattr(tokenizer, "backend_tokenizer", None)

    @classmethod
    def from_pretrained(cls, path: str) -> HFTokenizer:
        import os

        from transformers import AutoTokenizer

        try:
            if path.endswith(".gguf"):  # tokenizer and chat template inside the file
                folder, name = os.path.split(os.path.abspath(path))
                return cls(AutoTokenizer.from_pretrained(folder, gguf_file=name))
            return cls(AutoTokenizer.from_pretrained(path))
        except (OSError, ValueError) as exc:
            raise ValueError(f"could not load a tokenizer from {path!r}: {exc}") from exc

    def encode(self, text: str) -> list[int]:
        return list(self.hf.encode(text, add_special_tokens=True))

    def decode(self, token_ids: Sequence[int], skip_special_tokens: bool = True) -> str:
        if self._rust is not None:
            return self._rust.decode(list(token_ids), skip_special_tokens=skip_special_tokens)
        return self.hf.decode(list(token_ids), skip_special_tokens=skip_special_tokens,
                              clean_up_tokenization_spaces=False)

    def apply_chat_template(self, messages: list[dict[str, Any]],
                            add_generation_prompt: bool = True,
                            chat_template: str | None = None,
                            tools: list[dict[str, Any]] | None = None) -> list[int]:
        if chat_template is None and not getattr(self.hf, "chat_template", None):
            raise ValueError("this model's tokenizer has no chat template; pass chat_template= "
                             "or use generate() with a plain prompt")
        ids = self.hf.apply_chat_template(messages, add_generation_prompt=add_generation_prompt,
                                          chat_template=chat_template, tokenize=True,
                                          tools=tools)
        if isinstance(ids, dict) or hasattr(ids, "keys"):
            ids = ids["input_ids"]
        return list(ids)
