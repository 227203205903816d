"""What a plugin hands quire: BackendSpec, and the hookimpl marker."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import pluggy

PROJECT_NAME = "quire"
# major.minor: a plugin built for another major version is refused. 1.1: api_version must
# be declared (a spec without it is reported unavailable). 1.2: quire_register_quantization.
PLUGIN_API_VERSION = "1.2"

hookimpl = pluggy.HookimplMarker(PROJECT_NAME)
hookspec = pluggy.HookspecMarker(PROJECT_NAME)


@dataclass(frozen=True, slots=True)
class Availability:
    available: bool
    reason: str = ""

    def __bool__(self) -> bool:
        return self.available


def always_available() -> Availability:
    return Availability(True, "")


@dataclass(frozen=True, slots=True)
class BackendSpec:
    """One backend a plugin offers.

    name: what users pass to --backend / backend= / QUIRE_BACKEND.
    factory: "module:Class" of a quire.core.executor.Executor subclass, imported only when
        this backend is chosen.
    priority: automatic selection takes the highest-priority available backend.
    is_available: a cheap probe (no heavy imports when avoidable) saying whether and why not.
    explicit_only: usable only when asked for by name (never picked automatically).
    ops: "module" exposing the canonical-layout kernels the conformance kit checks:
        paged_attention(query, key_cache, value_cache, block_tables, query_start_loc,
        seq_lens, scale, sliding_window=None, soft_cap=None) and
        write_kv(key, value, key_cache, value_cache, slot_mapping), with the signatures,
        shapes and slot rule of quire.testing.reference (CPU torch tensors in; return a
        torch tensor or anything numpy can read). Raise NotImplementedError for a feature
        the backend lacks (e.g. soft_cap): the kit reports it as skipped.
    api_version: the PLUGIN_API_VERSION the plugin was built against (required: write
        ``api_version=quire.plugins.PLUGIN_API_VERSION`` when you build the plugin; a spec
        without it is reported unavailable, one of another major version is refused).
    """

    name: str
    factory: str
    priority: int = 0
    is_available: Callable[[], Availability] = always_available
    explicit_only: bool = False
    description: str = ""
    ops: str | None = None
    api_version: str | None = None
