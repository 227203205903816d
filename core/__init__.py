"""quire's hardware-agnostic core: pure Python plus numpy, never torch, jax or triton."""

from __future__ import annotations

from quire.core.config import EngineConfig
from quire.core.outputs import CompletionOutput, RequestMetrics, RequestOutput
from quire.core.sampling_params import SamplingParams

__all__ = ["CompletionOutput", "EngineConfig", "RequestMetrics", "RequestOutput", "SamplingParams"]
