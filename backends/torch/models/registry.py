"""Architecture registry keyed by config.json's architectures[0]."""

from __future__ import annotations

from collections.abc import Callable

from torch import nn

from quire.backends.torch.models.llama import LlamaForCausalLM
from quire.models.config import BUILTIN_ARCHITECTURES, architecture_name

ModelFactory = Callable[..., nn.Module]

_BUILTIN: dict[str, ModelFactory] = dict.fromkeys(BUILTIN_ARCHITECTURES, LlamaForCausalLM)


def supported_architectures(extra: dict[str, ModelFactory] | None = None) -> list[str]:
    return sorted({**_BUILTIN, **(extra or {})})


def resolve_architecture(raw_config: dict, extra: dict[str, ModelFactory] | None = None
                         ) -> tuple[str, ModelFactory]:
    """(architecture name, model factory) for an HF config; ValueError lists what is known."""
    models = {**_BUILTIN, **(extra or {})}
    name = architecture_name(raw_config)
    if name not in models:
        raise ValueError(
            f"model architecture {name or raw_config.get('model_type')!r} is not supported; "
            f"supported: {', '.join(supported_architectures(extra))}"
        )
    return name, models[name]
