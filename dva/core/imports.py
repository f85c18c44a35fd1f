"""Lazy imports of ``"package.module:attribute"`` paths: how specs name their implementations."""

from __future__ import annotations

import importlib
from typing import Any

from dva.core.errors import ConfigError


def import_object(path: str) -> Any:
    """Import ``"package.module:attribute"`` (or a whole module, without ``:attribute``)."""
    module_name, _, attribute = path.partition(":")
    try:
        module = importlib.import_module(module_name)
        return getattr(module, attribute) if attribute else module
    except (ImportError, AttributeError) as error:
        raise ConfigError(f"Cannot import '{path}' ({error}); reinstall the plugin that provides it.") from error
