"""pytest fixtures for plugin authors, loaded wherever dva is installed (``pytest11`` entry point).

- ``dva_plugins``: an isolated plugin catalogue (dva's built-ins plus the plugins you name, installed
  ones left out) that dva uses for the rest of the test, ``dva run`` in-process included.
- ``dva_tiny_sd``: a tiny Stable Diffusion folder with random weights (64 px images), built once.

Importing this module imports neither dva's models nor torch.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest


@pytest.fixture
def dva_plugins() -> Iterator[Callable[..., Any]]:
    """``dva_plugins(*plugins, entry_points=False, strict=True)`` loads and installs a fresh catalogue.

    With ``strict`` (the default) a broken plugin fails the test with its error. The catalogue dva
    had before the test is put back afterwards.
    """
    from dva.core import plugins

    previous = plugins._CACHED

    def load(*extra: Any, entry_points: bool = False, strict: bool = True) -> Any:
        catalogue = plugins.load_catalogue(strict=strict, entry_points=entry_points, extra=extra)
        plugins.reset_catalogue(catalogue)
        return catalogue

    yield load
    plugins.reset_catalogue(previous)


@pytest.fixture(scope="session")
def dva_tiny_sd(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A diffusers Stable Diffusion folder (CLIP encoder) with tiny random parts, for ``--model``."""
    from dva.testing.tiny import make_tiny_sd

    return make_tiny_sd(tmp_path_factory.mktemp("dva-tiny-sd") / "model")
