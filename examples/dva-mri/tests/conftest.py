"""dva-mri's tests run with this project installed for each test only, by dva's ``dva_install_plugin``
fixture: nothing is ``pip install``-ed, and the tests of dva itself never see the ``brain-mri`` modality.

In a virtualenv where dva-mri is installed (``pip install -e .``) the same tests pass unchanged.
"""

from __future__ import annotations

from pathlib import Path
from types import ModuleType

import pytest

PROJECT = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def dva_mri(dva_install_plugin) -> ModuleType:
    """The ``dva_mri`` package, importable, and its entry point seen by dva (``dva plugins`` in a subprocess too)."""
    dva_install_plugin(PROJECT)
    import dva_mri

    return dva_mri
