"""Without a GPU, run quire's Triton kernels in Triton's CPU interpreter. The variable must
be set before the kernels module is imported (Triton reads it when decorating kernels)."""

from __future__ import annotations

import os

import pytest
import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")


@pytest.fixture(scope="session")
def device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")
