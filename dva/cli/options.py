"""Click options generated from settings (:class:`dva.core.settings.Setting`): a schema in, decorators out.

``@click_options(settings)`` puts one option per setting on a command, in the order given (the first is the
topmost in ``--help``), each with its setting's flag, type, default, help and bounds. A value that the recipe
merge checks (a registry key) gets a plain type, so its error names the flag in dva's own sentence; any other
bounded number gets a click range, and a ``dict`` setting is repeatable ``KEY=VALUE`` pairs parsed into a dict.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, TypeVar

import click

from dva.core.errors import ConfigError
from dva.core.settings import Setting

F = TypeVar("F", bound=Callable[..., Any])


def key_values(pairs: Iterable[str], flag: str, example: str) -> dict[str, Any]:
    """``KEY=VALUE`` pairs; values are read as TOML scalars (``0.5``, ``true``, ``150``), else as text."""
    from dva.core.registry import tomllib

    options: dict[str, Any] = {}
    for pair in pairs:
        key, sep, raw = pair.partition("=")
        if not sep or not key:
            raise ConfigError(f"{flag} {pair}: expected KEY=VALUE, e.g. {flag} {example}.")
        try:
            options[key.strip()] = tomllib.loads(f"v = {raw}")["v"]
        except tomllib.TOMLDecodeError:
            options[key.strip()] = raw
    return options


def _click_type(setting: Setting) -> Any:
    option = setting.option
    if setting.path is not None:
        return click.Path(file_okay=setting.path != "folder", dir_okay=setting.path != "file")
    if option.choices is not None:
        return click.Choice(list(option.choices))
    bounded = option.minimum is not None or option.maximum is not None
    if bounded and not setting.in_entry and option.type in (int, float):
        kind = click.IntRange if option.type is int else click.FloatRange
        return kind(option.minimum, option.maximum)
    return option.type


def click_option(setting: Setting) -> Callable[[F], F]:
    """The click option of one setting (which must have a flag)."""
    if not setting.flag:
        raise ValueError(f"setting {setting.name} has no flag")
    option = setting.option
    attributes: dict[str, Any] = {
        "help": option.help or None,
        "default": option.default if setting.flag_default else None,
        "show_default": setting.flag_default,
        "required": setting.required,
    }
    if setting.metavar:
        attributes["metavar"] = setting.metavar
    if option.type is dict:
        flag, example = setting.flags[0], setting.example

        def parse(ctx: click.Context, param: click.Parameter, value: tuple[str, ...]) -> dict[str, Any]:
            return key_values(value, flag, example)

        attributes.update(multiple=True, default=None, show_default=False, callback=parse)
        attributes.setdefault("metavar", "KEY=VALUE")
    elif option.type is bool and len(setting.flags) == 1:
        attributes["is_flag"] = True
    elif option.type is not bool:
        attributes.update(type=_click_type(setting), multiple=setting.multiple)
    return click.option(setting.flag, setting.name, **attributes)


def click_options(settings: Sequence[Setting]) -> Callable[[F], F]:
    """Decorate a command with the options of ``settings``, in that order."""

    def decorate(function: F) -> F:
        for setting in reversed(settings):
            function = click_option(setting)(function)
        return function

    return decorate


def merged_flags(settings: Iterable[Setting], values: Mapping[str, Any]) -> dict[str, Any]:
    """The flag values the recipe merge takes (registry keys and component options), leaving out unset ones."""
    return {
        setting.name: values[setting.name] for setting in settings
        if (setting.in_entry or setting.target) and values.get(setting.name) not in (None, {}, ())
    }
