"""Errors that reach the user as one clear sentence.

Every error dva raises on purpose is a :class:`DvaError`; the CLI prints its message (no
traceback unless ``--debug``) and exits with the error's ``exit_code``.
"""

from __future__ import annotations

import difflib
import errno
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


# What the user's machine refused, as clauses naming the path: the OSErrors that are never dva's bug.
MACHINE_ERRORS = {
    errno.EACCES: "no permission to use {path}; fix its permissions, or choose a location you can write to",
    errno.EPERM: "no permission to use {path}; fix its permissions, or choose a location you can write to",
    errno.EROFS: "{path} is on a read-only file system; choose a writable location (e.g. another --out)",
    errno.ENOSPC: "the disk is full, so {path} cannot be written; free some space, or choose another --out",
    errno.EDQUOT: "the disk quota is used up, so {path} cannot be written; free some space, or choose another --out",
    errno.ENOTDIR: "part of {path} is a file, not a folder; choose another path",
}


def machine_error(error: BaseException, path: object = None) -> str | None:
    """The clause for an OSError of the user's machine (permission, read-only, full disk, a file in the way),
    naming ``path`` (default: the error's own file); None for any other error, which may be a bug."""
    path = path if path is not None else getattr(error, "filename", None)
    if not isinstance(error, OSError) or error.errno not in MACHINE_ERRORS or path is None:
        return None
    return MACHINE_ERRORS[error.errno].format(path=path)
