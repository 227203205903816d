"""Canonical-layout entry points of the Triton kernels (what the conformance kit checks)."""

from __future__ import annotations

from quire.backends.triton.attention import paged_attention, write_kv

__all__ = ["paged_attention", "write_kv"]
