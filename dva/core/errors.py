"""Errors that reach the user as one clear sentence.

Every error dva raises on purpose is a :class:`DvaError`; the CLI prints its message (no
traceback unless ``--debug``) and exits with the error's ``exit_code``.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable


class DvaError(Exception):
    """A problem the user can fix; ``str(error)`` says what is wrong and what to do."""

    exit_code = 2


class ConfigError(DvaError):
    """A bad option, registry entry, component name or model folder (exit status 2)."""


class InputError(DvaError):
    """One input file cannot be used; in a batch it is reported and skipped (exit status 1)."""

    exit_code = 1


class PluginError(DvaError):
    """A plugin is broken or conflicts with another one."""


class MetricUnavailable(DvaError):
    """A measure cannot run here (its weights are absent); evaluation skips it with this note."""


def unknown_name(kind: str, name: str, available: Iterable[str]) -> ConfigError:
    """``Unknown encoder 'radbrt'. Did you mean 'radbert'? Available: ...``."""
    names = sorted(available)
    close = difflib.get_close_matches(name, names, n=1, cutoff=0.6)
    hint = f" Did you mean '{close[0]}'?" if close else ""
    listing = ", ".join(names) if names else "none registered"
    return ConfigError(f"Unknown {kind} '{name}'.{hint} Available: {listing}.")
