"""Module swapping: how a backend puts its own implementation of a layer into a loaded
model (a plain torch pattern, like quantization conversion), without patching classes."""

from __future__ import annotations

from collections.abc import Callable

from torch import nn


def replace_modules(model: nn.Module, convert: Callable[[nn.Module], nn.Module | None]) -> int:
    """Replace every submodule for which convert(module) returns a new module; returns how
    many were replaced. Replacements are not visited again."""
    replaced = 0
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            new = convert(child)
            if new is not None:
                setattr(parent, name, new)
                replaced += 1
    return replaced
