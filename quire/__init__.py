"""quire: a hardware-portable LLM serving engine."""

from __future__ import annotations

from quire.core.config import EngineConfig
from quire.core.outputs import CompletionOutput, RequestOutput
from quire.core.sampling_params import SamplingParams, StructuredOutputsParams
from quire.llm import LLM

__version__ = "0.1.0"
__all__ = ["LLM", "CompletionOutput", "EngineConfig", "RequestOutput", "SamplingParams",
           "StructuredOutputsParams"]
