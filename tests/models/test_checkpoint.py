"""The model layer reads safetensors itself (no torch): every dtype it claims, bf16 too."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from quire.models.checkpoint import open_checkpoint, read_safetensors


def test_read_safetensors_matches_torch(tmp_path):
    tensors = {"a.bf16": torch.randn(3, 5).to(torch.bfloat16), "b.f32": torch.randn(7),
               "c.f16": torch.randn(2, 2, 2).half(), "d.i64": torch.arange(6).view(2, 3)}
    path = str(tmp_path / "x.safetensors")
    save_file(tensors, path, metadata={"format": "pt"})
    got = dict(read_safetensors(path))
    assert sorted(got) == sorted(tensors)
    for name, t in tensors.items():
        np.testing.assert_array_equal(np.asarray(got[name], np.float64),
                                      t.double().numpy(), err_msg=name)


def test_open_checkpoint_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="config.json"):
        open_checkpoint(str(tmp_path))
    with pytest.raises(FileNotFoundError, match="GGUF"):
        open_checkpoint(str(tmp_path / "missing.gguf"))
