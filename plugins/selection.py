"""Choosing a backend: explicit name > QUIRE_BACKEND > highest-priority available."""

from __future__ import annotations

import importlib
import os

from quire.plugins.manager import BackendStatus, QuirePlugins


def select_backend(plugins: QuirePlugins, requested: str | None = None,
                   env: dict[str, str] | None = None) -> BackendStatus:
    env = os.environ if env is None else env
    requested = requested or env.get("QUIRE_BACKEND") or None
    table = plugins.backends()
    by_name = {s.spec.name: s for s in table}
    available = [s for s in table if s.availability]
    override = plugins.pm.hook.quire_select_backend(
        specs=[s.spec for s in available], requested=requested)
    if override is not None:
        return by_name[override.name]
    if requested is not None:
        status = by_name.get(requested)
        if status is None:
            raise ValueError(f"unknown backend {requested!r}.\n{describe(plugins, table)}")
        if not status.availability:
            raise ValueError(f"backend {requested!r} is not available: "
                             f"{status.availability.reason}.\n{describe(plugins, table)}")
        return status
    automatic = [s for s in available if not s.spec.explicit_only]
    if not automatic:
        raise ValueError(f"no backend is available.\n{describe(plugins, table)}")
    return automatic[0]


def load_factory(status: BackendStatus) -> type:
    """Import the backend's Executor class. Any failure (an ImportError, or anything the
    module raises while importing) becomes one ValueError naming the backend and plugin."""
    module_name, _, attr = status.spec.factory.partition(":")
    try:
        factory = getattr(importlib.import_module(module_name), attr)
    except Exception as exc:
        raise ValueError(f"backend {status.spec.name!r} (plugin {status.plugin!r}, package "
                         f"{status.package}) could not be loaded from "
                         f"{status.spec.factory!r}: {type(exc).__name__}: {exc}") from exc
    if not isinstance(factory, type):
        raise ValueError(f"backend {status.spec.name!r}: {status.spec.factory!r} is not a "
                         "class (BackendSpec.factory names an Executor subclass)")
    return factory


def describe(plugins: QuirePlugins, table: list[BackendStatus] | None = None) -> str:
    """The table users see: name, available, priority, package, plugin, reason."""
    table = plugins.backends() if table is None else table
    rows = [("backend", "available", "priority", "package", "plugin", "reason")]
    for s in table:
        rows.append((s.spec.name, "yes" if s.availability else "no", str(s.spec.priority),
                     s.package, s.plugin, s.availability.reason or s.spec.description))
    widths = [max(len(r[i]) for r in rows) for i in range(5)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r[:5], widths)) + "  " + r[5] for r in rows]
    lines += [f"plugin {e.plugin!r} was skipped: {e.error}" for e in plugins.errors]
    return "\n".join(lines)
