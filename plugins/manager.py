"""Loading plugins (built-ins first, then the "quire" entry points) and asking their hooks."""

from __future__ import annotations

import importlib
import importlib.metadata
import logging
import os
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

import pluggy

from quire.plugins import hookspecs
from quire.plugins.spec import PLUGIN_API_VERSION, PROJECT_NAME, Availability, BackendSpec

logger = logging.getLogger(__name__)

ENTRY_POINT_GROUP = "quire"
BUILTIN_PLUGINS = (
    "quire.backends.cpu.plugin",
    "quire.backends.cuda.plugin",
    "quire.backends.rocm.plugin",
    "quire.backends.triton.plugin",
    "quire.backends.tpu.plugin",
)


@dataclass(slots=True)
class BackendStatus:
    spec: BackendSpec
    plugin: str  # the plugin (entry point or builtin module) that registered it
    package: str  # the distribution that provides it
    availability: Availability


@dataclass(slots=True)
class PluginError:
    plugin: str
    error: str


@dataclass(slots=True)
class QuirePlugins:
    pm: pluggy.PluginManager
    packages: dict[str, str] = field(default_factory=dict)  # plugin name -> distribution
    errors: list[PluginError] = field(default_factory=list)

    def backends(self) -> list[BackendStatus]:
        """Every registered backend, probed. Raises ValueError when two plugins claim one
        name."""
        seen: dict[str, BackendStatus] = {}
        for plugin_name, specs in self._call_each("quire_register_backends"):
            for spec in specs or []:
                if spec.name in seen:
                    raise ValueError(
                        f"backend name {spec.name!r} is registered by both "
                        f"{seen[spec.name].plugin!r} and {plugin_name!r}; uninstall one of them"
                    )
                seen[spec.name] = BackendStatus(spec, plugin_name,
                                                self.packages.get(plugin_name, "?"),
                                                _probe(spec))
        return sorted(seen.values(), key=lambda s: (-s.spec.priority, s.spec.name))

    def logger_names(self) -> list[str]:
        """Top-level package of every registered plugin: where their loggers live."""
        names = set()
        for plugin in self.pm.get_plugins():
            module = getattr(plugin, "__name__", None) or type(plugin).__module__
            names.add(module.split(".")[0])
        return sorted(names)

    def models(self) -> dict[str, Callable]:
        found: dict[str, Callable] = {}
        for _, models in self._call_each("quire_register_models"):
            found.update(models or {})
        return found

    def quantization_methods(self) -> dict[str, Callable]:
        found: dict[str, Callable] = {}
        for _, methods in self._call_each("quire_register_quantization"):
            found.update(methods or {})
        return found

    def _call_each(self, hook_name: str) -> Iterable[tuple[str, object]]:
        """Call one hook plugin by plugin so that one failing plugin is reported, not fatal."""
        caller = getattr(self.pm.hook, hook_name)
        for impl in reversed(caller.get_hookimpls()):
            try:
                yield impl.plugin_name, impl.function()
            except Exception as exc:  # a broken plugin must not take the others down
                msg = f"{hook_name} raised {type(exc).__name__}: {exc}"
                logger.warning("plugin %s skipped: %s", impl.plugin_name, msg)
                self.errors.append(PluginError(impl.plugin_name, msg))


def load_plugins(
    env: dict[str, str] | None = None,
    entry_points: Iterable[importlib.metadata.EntryPoint] | None = None,
) -> QuirePlugins:
    """A fresh plugin manager with the built-in plugins and the installed entry points.

    QUIRE_PLUGINS (comma-separated) limits which external plugins load: each name matches
    an entry point's name or its distribution's name (backend names are only known once a
    plugin has loaded). Empty or unset loads all of them; built-ins always load."""
    env = os.environ if env is None else env
    pm = pluggy.PluginManager(PROJECT_NAME)
    pm.add_hookspecs(hookspecs)
    plugins = QuirePlugins(pm)
    for module_name in BUILTIN_PLUGINS:
        pm.register(importlib.import_module(module_name), name=module_name)
        plugins.packages[module_name] = "quire"
    allowed = {n.strip() for n in env.get("QUIRE_PLUGINS", "").split(",") if n.strip()}
    if entry_points is None:
        entry_points = importlib.metadata.entry_points(group=ENTRY_POINT_GROUP)
    for ep in entry_points:
        dist = ep.dist.name if ep.dist is not None else None
        if allowed and ep.name not in allowed and dist not in allowed:
            continue
        try:
            pm.register(ep.load(), name=ep.name)
        except Exception as exc:
            msg = f"failed to load ({type(exc).__name__}: {exc})"
            logger.warning("plugin %s skipped: %s", ep.name, msg)
            plugins.errors.append(PluginError(ep.name, msg))
            continue
        plugins.packages[ep.name] = dist or "?"
    return plugins


def _probe(spec: BackendSpec) -> Availability:
    if not spec.api_version:
        return Availability(False, "the plugin does not declare BackendSpec.api_version; "
                                   "set api_version=quire.plugins.PLUGIN_API_VERSION")
    major = spec.api_version.split(".")[0]
    if major != PLUGIN_API_VERSION.split(".")[0]:
        return Availability(False, f"built for plugin API {spec.api_version}, quire speaks "
                                   f"{PLUGIN_API_VERSION}; upgrade the plugin or quire")
    try:
        result = spec.is_available()
    except Exception as exc:
        return Availability(False, f"availability probe raised {type(exc).__name__}: {exc}")
    if isinstance(result, bool):
        return Availability(result, "" if result else "probe said no")
    return result
