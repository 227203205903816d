"""Architecture registry keyed by config.json's architectures[0]."""

from __future__ import annotations

from collections.abc import Callable

from torch import nn

from quire.backends.torch.models.llama import LlamaForCausalLM

ModelFactory = Callable[..., nn.Module]

_BUILTIN: dict[str, ModelFactory] = {
    "LlamaForCausalLM": LlamaForCausalLM,
    "MistralForCausalLM": LlamaForCausalLM,
    "Qwen2ForCausalLM": LlamaForCausalLM,
    "Qwen3ForCausalLM": LlamaForCausalLM,
}

_MODEL_TYPES = {"llama": "LlamaForCausalLM", "mistral": "MistralForCausalLM",
                "qwen2": "Qwen2ForCausalLM", "qwen3": "Qwen3ForCausalLM"}


def supported_architectures(extra: dict[str, ModelFactory] | None = None) -> list[str]:
    return sorted({**_BUILTIN, **(extra or {})})


def resolve_architecture(raw_config: dict, extra: dict[str, ModelFactory] | None = None
                         ) -> tuple[str, ModelFactory]:
    """(architecture name, model factory) for an HF config; ValueError lists what is known."""
    models = {**_BUILTIN, **(extra or {})}
    archs = raw_config.get("architectures") or []
    name = archs[0] if archs else _MODEL_TYPES.get(raw_config.get("model_type", ""), "")
    if name not in models:
        raise ValueError(
            f"model architecture {name or raw_config.get('model_type')!r} is not supported; "
            f"supported: {', '.join(supported_architectures(extra))}"
        )
    return name, models[name]
