"""The plugin manager: built-in plugins first, then the ``dva`` entry points, each in its own try.

A plugin that fails to import (or whose hooks raise) is recorded with its distribution, version
and error, shown by ``dva plugins``, and never stops the rest from loading unless ``strict``.
"""

from __future__ import annotations

import importlib
import importlib.metadata
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import pluggy

from dva.core import hookspecs
from dva.core.errors import PluginError, unknown_name
from dva.core.specs import SPEC_KINDS, ComponentSpec

ENTRY_POINT_GROUP = "dva"

BUILTIN_PLUGINS = (
    "dva.plugins.encoders",
    "dva.plugins.priors",
    "dva.plugins.schedulers",
    "dva.plugins.modalities",
    "dva.plugins.finetuners",
    "dva.plugins.datasets",
    "dva.plugins.metrics",
)

HOOK_FOR_KIND = {
    "encoder": "register_encoders",
    "prior": "register_priors",
    "scheduler": "register_schedulers",
    "finetuner": "register_finetuners",
    "metric": "register_metrics",
    "modality": "register_modalities",
    "dataset": "register_datasets",
}


@dataclass(frozen=True)
class PluginInfo:
    """Where a plugin comes from: its module name and the distribution that installed it."""

    name: str
    distribution: str
    version: str


@dataclass(frozen=True)
class BrokenPlugin:
    """A plugin that could not be loaded, and why."""

    info: PluginInfo
    error: str


@dataclass(frozen=True)
class Registered:
    """A registered component spec with the plugin that provided it."""

    spec: ComponentSpec
    plugin: PluginInfo


@dataclass
class Catalogue:
    """Every registered component by kind, plus the plugins that failed."""

    components: dict[str, dict[str, Registered]] = field(default_factory=lambda: {k: {} for k in SPEC_KINDS})
    broken: list[BrokenPlugin] = field(default_factory=list)
    manager: pluggy.PluginManager | None = None

    def get(self, kind: str, name: str) -> Any:
        """The spec of ``kind`` called ``name``, or a ConfigError with a did-you-mean."""
        found = self.components[kind].get(name)
        if found is None:
            raise unknown_name(kind, name, self.components[kind])
        return found.spec

    def names(self, kind: str) -> list[str]:
        return sorted(self.components[kind])


def _dva_version() -> str:
    try:
        return importlib.metadata.version("dva")
    except importlib.metadata.PackageNotFoundError:
        return "dev"


def _new_manager() -> pluggy.PluginManager:
    manager = pluggy.PluginManager("dva")
    manager.add_hookspecs(hookspecs)
    return manager


def _collect(manager: pluggy.PluginManager, plugin: Any, info: PluginInfo, catalogue: Catalogue) -> None:
    """Run one plugin's register hooks and add what it registers (all or nothing)."""
    found: list[Registered] = []
    for kind, hook_name in HOOK_FOR_KIND.items():
        implementation = getattr(plugin, hook_name, None)
        if implementation is None:
            continue
        spec_type = SPEC_KINDS[kind]

        def register(spec: Any, _kind: str = kind, _type: type = spec_type) -> None:
            if not isinstance(spec, _type):
                raise PluginError(f"{hook_name} must register {_type.__name__} objects, got {type(spec).__name__}.")
            found.append(Registered(spec, info))

        implementation(register=register)
    seen: dict[tuple[str, str], PluginInfo] = {}
    for item in found:
        key = (item.spec.kind, item.spec.name)
        existing = catalogue.components[item.spec.kind].get(item.spec.name)
        if existing is not None or key in seen:
            other = existing.plugin if existing else seen[key]
            raise PluginError(
                f"{item.spec.kind} '{item.spec.name}' is registered by both {other.distribution} "
                f"({other.name}) and {info.distribution} ({info.name}); uninstall one of them."
            )
        seen[key] = info
    for item in found:
        catalogue.components[item.spec.kind][item.spec.name] = item


def _entry_points() -> list[importlib.metadata.EntryPoint]:
    return sorted(importlib.metadata.entry_points(group=ENTRY_POINT_GROUP), key=lambda ep: ep.name)


def load_catalogue(strict: bool = False, entry_points: bool = True, extra: Iterable[Any] = ()) -> Catalogue:
    """Load built-in and installed plugins into a fresh catalogue.

    ``extra`` adds in-process plugin objects (modules or instances) after the installed ones, for
    tests and notebooks. With ``strict``, the first broken plugin raises a PluginError instead of
    being recorded.
    """
    manager = _new_manager()
    catalogue = Catalogue(manager=manager)
    version = _dva_version()
    sources: list[tuple[PluginInfo, Any]] = [
        (PluginInfo(name, "dva", version), name) for name in BUILTIN_PLUGINS
    ]
    if entry_points:
        for entry_point in _entry_points():
            dist = entry_point.dist
            info = PluginInfo(
                entry_point.name,
                dist.metadata["Name"] if dist is not None else "unknown",
                dist.version if dist is not None else "unknown",
            )
            sources.append((info, entry_point))
    for plugin in extra:
        name = getattr(plugin, "__name__", type(plugin).__name__)
        sources.append((PluginInfo(name, "(in-process)", ""), plugin))
    for info, source in sources:
        try:
            if isinstance(source, str):
                plugin = importlib.import_module(source)
            elif isinstance(source, importlib.metadata.EntryPoint):
                plugin = source.load()
            else:
                plugin = source
            manager.register(plugin, name=info.name)
            manager.check_pending()  # a misspelled hook name marks this plugin broken
            _collect(manager, plugin, info, catalogue)
        except Exception as error:  # a broken plugin must never take the others down
            if manager.get_plugin(info.name) is not None:
                manager.unregister(name=info.name)
            broken = BrokenPlugin(info, f"{type(error).__name__}: {error}")
            if strict:
                raise PluginError(f"Plugin {info.name} ({info.distribution} {info.version}) is broken: {broken.error}") from error
            catalogue.broken.append(broken)
    return catalogue


_CACHED: Catalogue | None = None


def get_catalogue() -> Catalogue:
    """The process-wide catalogue, loaded on first use."""
    global _CACHED
    if _CACHED is None:
        _CACHED = load_catalogue()
    return _CACHED


def reset_catalogue(catalogue: Catalogue | None = None) -> None:
    """Replace (or drop) the process-wide catalogue; used by tests and ``dva.testing``."""
    global _CACHED
    _CACHED = catalogue
