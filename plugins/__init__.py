"""quire's plugin system: pluggy hooks through which every backend, built in or not, arrives.

A plugin is a module (or object) with functions marked by ``hookimpl``, exposed to quire
through the ``quire`` entry-point group::

    [project.entry-points.quire]
    my_accel = "my_accel.plugin"
"""

from __future__ import annotations

from quire.plugins.spec import PLUGIN_API_VERSION, Availability, BackendSpec, hookimpl

__all__ = ["PLUGIN_API_VERSION", "Availability", "BackendSpec", "hookimpl"]
