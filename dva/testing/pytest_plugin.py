"""pytest fixtures for plugin authors, loaded wherever dva is installed (``pytest11`` entry point).

- ``dva_plugins``: an isolated plugin catalogue (dva's built-ins plus the plugins you name, installed
  ones left out) that dva uses for the rest of the test, ``dva run`` in-process included.
- ``dva_install_plugin``: a plugin project (a folder with its ``pyproject.toml``) seen as installed for
  one test, by dva in-process and by the ``dva`` subprocesses the test starts, without ``pip install``.
- ``dva_tiny_sd``: a tiny Stable Diffusion folder with random weights (64 px images), built once.

Importing this module imports neither dva's models nor torch.
"""

from __future__ import annotations

import contextlib
import os
import re
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib


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


def write_dist_info(project: Path, site: Path) -> tuple[str, Path]:
    """Write ``project``'s metadata and entry points into ``site`` as a ``<name>.dist-info`` folder.

    That is all ``importlib.metadata`` (and so dva's plugin discovery) needs to see a distribution
    on ``sys.path``. Returns the distribution's name and the folder its packages import from
    (``src/`` when the project has one, else the project folder).
    """
    metadata = tomllib.loads((project / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    name, version = metadata["name"], metadata.get("version", "0")
    folder = site / f"{re.sub(r'[-_.]+', '_', name)}-{version}.dist-info"
    folder.mkdir(parents=True)
    (folder / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n", encoding="utf-8")
    groups = [
        f"[{group}]\n" + "".join(f"{key} = {value}\n" for key, value in points.items())
        for group, points in metadata.get("entry-points", {}).items()
    ]
    (folder / "entry_points.txt").write_text("\n".join(groups), encoding="utf-8")
    source = project / "src" if (project / "src").is_dir() else project
    return name, source


@contextlib.contextmanager
def installing_plugins(site: Path) -> Iterator[Callable[[str | Path], str]]:
    """Within the block, ``install(project)`` makes the plugin project in folder ``project`` look installed.

    Its distribution (name, version, entry points from its ``pyproject.toml``, written into ``site``)
    and its packages go on ``sys.path`` and ``PYTHONPATH``, so dva finds its entry points as it would
    after ``pip install``, in-process and in subprocesses (``dva plugins`` included), and dva's
    catalogue is reloaded on next use. On leaving, ``sys.path``, ``PYTHONPATH`` and the catalogue are
    put back and the projects' modules are forgotten. ``install`` returns the distribution's name.
    """
    from dva.core import plugins

    previous = plugins._CACHED
    sources: list[Path] = []
    with pytest.MonkeyPatch.context() as monkeypatch:

        def install(project: str | Path) -> str:
            name, source = write_dist_info(Path(project).resolve(), site)
            sources.append(source)
            for folder in (source, site):
                monkeypatch.syspath_prepend(str(folder))
                path = os.pathsep.join(filter(None, [str(folder), os.environ.get("PYTHONPATH")]))
                monkeypatch.setenv("PYTHONPATH", path)
            plugins.reset_catalogue(None)
            return name

        try:
            yield install
        finally:
            prefixes = tuple(str(source) + os.sep for source in sources)
            for module_name, module in list(sys.modules.items()):
                if str(getattr(module, "__file__", None) or "").startswith(prefixes):
                    del sys.modules[module_name]
            plugins.reset_catalogue(previous)


@pytest.fixture
def dva_install_plugin(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Callable[[str | Path], str]]:
    """``dva_install_plugin(project)``: the plugin project in folder ``project`` (with its ``pyproject.toml``)
    is installed for this test only, without pip: dva finds it in-process and in the subprocesses the
    test starts. See :func:`installing_plugins`."""
    with installing_plugins(tmp_path_factory.mktemp("dva-site")) as install:
        yield install


@pytest.fixture(scope="session")
def dva_tiny_sd(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A diffusers Stable Diffusion folder (CLIP encoder) with tiny random parts, for ``--model``."""
    from dva.testing.tiny import make_tiny_sd

    return make_tiny_sd(tmp_path_factory.mktemp("dva-tiny-sd") / "model")
