from __future__ import annotations

import shutil

import pytest


@pytest.fixture(scope="session")
def tokenizer_dir(tmp_path_factory):
    from quire.testing.tiny_models import build_tokenizer

    path = tmp_path_factory.mktemp("tokenizer")
    build_tokenizer(str(path))
    return path


@pytest.fixture(scope="session")
def model_factory(tmp_path_factory, tokenizer_dir):
    """build(arch, **kwargs) -> folder of a tiny random HF model (cached per arguments)."""
    from quire.testing import tiny_models

    cache: dict[tuple, str] = {}

    def build(arch: str = "llama", **kwargs) -> str:
        key = (arch, tuple(sorted(kwargs.items())))
        if key not in cache:
            path = tmp_path_factory.mktemp(f"model-{arch}")
            cache[key] = tiny_models.build_model(str(path), arch, **kwargs)
        return cache[key]

    return build


@pytest.fixture(scope="session")
def llama_dir(model_factory):
    return model_factory("llama")


@pytest.fixture()
def copy_model(tmp_path):
    def copy(src: str) -> str:
        dst = tmp_path / "model"
        shutil.copytree(src, dst)
        return str(dst)

    return copy


pytest_plugins = ["tests.server_fixtures"]
