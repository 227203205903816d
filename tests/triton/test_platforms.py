"""Platform configuration of the cuda and rocm backends, with the device probe mocked."""

from __future__ import annotations

import inspect
import logging

import numpy as np
import pytest

from quire.backends.cuda import platform as cuda
from quire.backends.rocm import platform as rocm
from quire.backends.triton.config import KernelConfig


def test_cuda_tuning_by_compute_capability():
    h100 = cuda.kernel_config(cuda.CudaDevice("H100", (9, 0), 132))
    assert (h100.num_stages, h100.max_block_q, h100.target_programs) == (3, 32, 264)
    assert h100.fp8_dtype == "float8_e4m3fn"
    assert "waves_per_eu" not in h100.launch_options()  # an AMD-only option
    # an unlisted newer part takes the nearest older entry
    future = cuda.kernel_config(cuda.CudaDevice("next", (12, 0), 170))
    assert future.num_stages == cuda.TUNING[(10, 0)]["num_stages"]
    assert future.target_programs == 340


def test_cuda_availability_with_probe_mocked(monkeypatch):
    monkeypatch.setattr(cuda, "probe", lambda: None)
    assert not cuda.availability()
    monkeypatch.setattr(cuda, "probe", lambda: cuda.CudaDevice("P100", (6, 0), 56))
    assert "older than Volta" in cuda.availability().reason
    monkeypatch.setattr(cuda, "probe", lambda: cuda.CudaDevice("H100", (9, 0), 132))
    assert cuda.availability() and cuda.availability().reason == "H100"


def test_rocm_tuning_by_gfx_arch(caplog):
    mi300 = rocm.kernel_config(rocm.RocmDevice("MI300X", "gfx942", 304))
    assert mi300.fp8_dtype == "float8_e4m3fnuz"  # CDNA3: the fnuz fp8 variant
    assert mi300.launch_options() == {"num_warps": 4, "num_stages": 2, "waves_per_eu": 2}
    assert mi300.target_programs == 608
    assert rocm.kernel_config(rocm.RocmDevice("MI355X", "gfx950", 256)).fp8_dtype == \
        "float8_e4m3fn"
    assert rocm.kernel_config(rocm.RocmDevice("MI250X", "gfx90a", 110)).num_stages == 1
    with caplog.at_level(logging.WARNING):
        unknown = rocm.kernel_config(rocm.RocmDevice("new", "gfx1201", 64))
    assert unknown.num_warps == rocm.TUNING[rocm.DEFAULT_ARCH]["num_warps"]
    assert "gfx1201" in caplog.text


def test_rocm_probe_mocked(monkeypatch):
    import torch

    class Props:
        name, gcnArchName, multi_processor_count = "AMD Instinct MI300X", \
            "gfx942:sramecc+:xnack-", 304

    monkeypatch.setattr(torch.version, "hip", "6.2.0", raising=False)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_device_properties", lambda i: Props())
    device = rocm.probe()
    assert device == rocm.RocmDevice("AMD Instinct MI300X", "gfx942", 304)
    assert rocm.availability().reason == "AMD Instinct MI300X (gfx942)"
    assert cuda.probe() is None  # a HIP build is never the cuda backend


def test_rocm_path_uses_no_cuda_only_api():
    from quire.backends.rocm import executor

    source = inspect.getsource(rocm) + inspect.getsource(executor)
    for cuda_only in ("get_device_capability", "nvml", "nvidia", "sm_", "cudart"):
        assert cuda_only not in source


def test_rocm_fp8_dtype_exists_in_torch():
    import torch

    for entry in rocm.TUNING.values():
        assert isinstance(getattr(torch, entry["fp8_dtype"]), torch.dtype)
    assert rocm.fp8_dtype(KernelConfig(fp8_dtype="float8_e4m3fnuz")) == torch.float8_e4m3fnuz


def test_decode_graph_eligibility():
    """Which batches the decode graphs take (capture itself needs a GPU)."""
    from quire.backends.triton.graphs import DecodeGraphs
    from quire.core.batch import Batch

    graphs = DecodeGraphs(None, [], (1, 2, 4, 8), max_pages=8, max_model_len=128,
                          device=None)

    def batch(num_reqs, rows, tokens, max_q=1, width=3, sampled=None):
        return Batch(
            input_ids=np.zeros(tokens, np.int32), positions=np.zeros(tokens, np.int32),
            slot_mapping=np.zeros(tokens, np.int64),
            query_start_loc=np.zeros(rows + 1, np.int32), seq_lens=np.zeros(rows, np.int32),
            block_tables=np.zeros((rows, width), np.int32),
            logits_indices=np.arange(num_reqs if sampled is None else sampled, dtype=np.int32),
            sampling=None, num_reqs=num_reqs, num_tokens=num_reqs, max_query_len=max_q,
            max_seq_len=10, block_size=16)

    assert graphs.can_run(batch(3, 4, 4))
    assert not graphs.can_run(batch(3, 4, 8))  # tokens not padded like requests
    assert not graphs.can_run(batch(3, 4, 4, max_q=2))  # prefill in the batch
    assert not graphs.can_run(batch(10, 16, 16))  # no graph for this bucket
    assert not graphs.can_run(batch(3, 4, 4, width=9))  # wider than captured tables
    assert not graphs.can_run(batch(3, 4, 4, sampled=2))  # a request not sampling


@pytest.mark.parametrize("name", ["cuda", "rocm"])
def test_gpu_backends_registered_and_explained(name):
    from quire.plugins.manager import load_plugins

    table = {s.spec.name: s for s in load_plugins().backends()}
    assert table[name].spec.ops == "quire.backends.triton.ops"
    if not table[name].availability:
        assert "GPU" in table[name].availability.reason
