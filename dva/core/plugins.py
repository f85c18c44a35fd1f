"""The plugin manager: built-in plugins first, then the ``dva`` entry points, each in its own try.

A plugin that fails to import (or whose hooks raise, or that calls ``sys.exit``) is recorded with its
distribution, version and error, shown by ``dva plugins``, and never stops the rest from loading
unless ``strict``. Its ``register_commands`` hook runs here too, on a collecting group, so a plugin
whose commands fail is left out whole like any other broken plugin, and ``dva --help`` still works.

Hooks are found and called through pluggy (its hook implementations, not functions looked up by
name), one plugin at a time: ``@hookimpl(specname=...)`` and implementations that take fewer
arguments than their hook work as pluggy documents them.
"""

from __future__ import annotations

import importlib
import importlib.metadata
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import click
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


@dataclass(frozen=True)
class PluginCommand:
    """A click command a plugin added through ``register_commands``, with the plugin that added it."""

    command: click.Command
    plugin: PluginInfo


@dataclass
class Catalogue:
    """Every registered component by kind, the plugins' commands by name, and the plugins that failed."""

    components: dict[str, dict[str, Registered]] = field(default_factory=lambda: {k: {} for k in SPEC_KINDS})
    broken: list[BrokenPlugin] = field(default_factory=list)
    manager: pluggy.PluginManager | None = None
    commands: dict[str, PluginCommand] = field(default_factory=dict)

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


def _implementations(manager: pluggy.PluginManager, plugin: Any, hook_name: str) -> list[pluggy.HookImpl]:
    """``plugin``'s implementations of ``hook_name``, whatever their function names (pluggy's ``specname``),
    in the order pluggy calls them."""
    found = [impl for impl in reversed(getattr(manager.hook, hook_name).get_hookimpls()) if impl.plugin is plugin]
    for impl in found:
        if impl.hookwrapper or impl.wrapper:
            raise PluginError(f"{impl.function.__name__} is a wrapper of {hook_name}; dva's hooks take no wrappers.")
    return found


def _call(manager: pluggy.PluginManager, plugin: Any, hook_name: str, **arguments: Any) -> None:
    """Call ``plugin``'s implementations of ``hook_name`` as pluggy does, each with only the arguments it
    names (opt-in arguments: one that names none is called with none).

    One plugin at a time, rather than ``manager.hook.<name>(...)`` for all, so that a hook that raises
    marks only its own plugin broken.
    """
    for impl in _implementations(manager, plugin, hook_name):
        returned = impl.function(*(arguments[name] for name in impl.argnames))
        if returned is not None:
            raise PluginError(
                f"{impl.function.__name__} ({hook_name}) returned {type(returned).__name__}; dva's hooks return "
                "nothing: call register(spec) for each component instead."
            )


def _commands_of(manager: pluggy.PluginManager, plugin: Any) -> dict[str, click.Command]:
    """The commands ``plugin``'s ``register_commands`` adds, collected on a group of their own.

    The hook runs while the catalogue loads rather than on dva's own group, so that a hook that
    raises only marks its plugin broken, and a command name two plugins add is caught as a clash.
    """
    group = click.Group(name="dva")
    _call(manager, plugin, "register_commands", cli=group)
    return dict(group.commands)


def _registered(manager: pluggy.PluginManager, plugin: Any, info: PluginInfo) -> list[Registered]:
    """Every spec ``plugin``'s register hooks register, each checked to be of its hook's spec class."""
    found: list[Registered] = []
    for kind, hook_name in HOOK_FOR_KIND.items():
        spec_type = SPEC_KINDS[kind]

        def register(spec: Any, _hook: str = hook_name, _type: type = spec_type) -> None:
            if not isinstance(spec, _type):
                raise PluginError(f"{_hook} must register {_type.__name__} objects, got {type(spec).__name__}.")
            found.append(Registered(spec, info))

        _call(manager, plugin, hook_name, register=register)
    return found


def _collect(manager: pluggy.PluginManager, plugin: Any, info: PluginInfo, catalogue: Catalogue) -> None:
    """Run one plugin's hooks and add what it registers (all or nothing)."""
    found = _registered(manager, plugin, info)
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
    commands = _commands_of(manager, plugin)
    for name in commands:
        if name in catalogue.commands:
            other = catalogue.commands[name].plugin
            raise PluginError(
                f"command '{name}' is added by both {other.distribution} ({other.name}) and "
                f"{info.distribution} ({info.name}); uninstall one of them."
            )
    for item in found:
        catalogue.components[item.spec.kind][item.spec.name] = item
    for name, command in commands.items():
        catalogue.commands[name] = PluginCommand(command, info)


def _describe(error: BaseException) -> str:
    """The error as ``dva plugins`` shows it; a ``sys.exit`` is named as such, since its own text is just a code."""
    if isinstance(error, SystemExit):
        return f"SystemExit: the plugin called sys.exit({error.code!r}) while loading"
    return f"{type(error).__name__}: {error}"


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
        plugin: Any = None
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
        # A broken plugin must never take the others down: SystemExit (a BaseException) included.
        # KeyboardInterrupt is the user's and goes through.
        except (Exception, SystemExit) as error:
            if plugin is not None and manager.get_plugin(info.name) is plugin:
                manager.unregister(name=info.name)
            broken = BrokenPlugin(info, _describe(error))
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
