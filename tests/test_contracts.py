"""The public contracts (``dva.core.contracts``, re-exported from ``dva``): one import for a plugin author,
light to import, the data types the same objects under their old import paths, and dva's own
components conforming to the Protocols they document."""

from __future__ import annotations

import dataclasses
import subprocess
import sys

import pytest

import dva
from dva.core.contracts import PairMetric, Prior, SetMetric
from dva.core.plugins import load_catalogue


def test_importing_dva_imports_neither_torch_nor_numpy():
    code = "import sys, dva; print(sorted({'torch', 'numpy', 'diffusers'} & set(sys.modules)))"
    found = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert found.stdout.strip() == "[]"


def test_every_public_name_resolves():
    assert all(getattr(dva, name) is not None for name in dva.__all__)
    assert set(dva.__all__) <= set(dir(dva))
    with pytest.raises(AttributeError, match="no attribute 'nothing_here'"):
        dva.nothing_here  # noqa: B018


@pytest.mark.parametrize(
    "module, name",
    [
        ("dva.components.priors", "ModelParts"),
        ("dva.core.io", "Scan"),
        ("dva.core.io", "MIN_SIDE"),
        ("dva.core.modality", "ScanImage"),
        ("dva.core.modality", "ScanInput"),
        ("dva.core.modality", "ImageResult"),
        ("dva.datasets", "Sample"),
        ("dva.datasets", "LabelledDataset"),
    ],
)
def test_moved_types_are_the_same_objects_under_their_old_import_paths(module, name):
    assert getattr(__import__(module, fromlist=[name]), name) is getattr(dva, name)


def test_generate_request_is_frozen_and_its_condition_optional():
    request = dva.GenerateRequest("images", "positive", "negative", [], 2, 7.5)
    assert request.condition is None
    with pytest.raises(dataclasses.FrozenInstanceError):
        request.steps = 3  # type: ignore[misc]


def test_every_built_in_prior_and_metric_follows_its_protocol():
    catalogue = load_catalogue(entry_points=False, strict=True)
    for name in catalogue.names("prior"):
        assert issubclass(catalogue.get("prior", name).resolve(), Prior), name
    for name in catalogue.names("metric"):
        spec = catalogue.get("metric", name)
        assert issubclass(spec.resolve(), SetMetric if spec.scope == "sets" else PairMetric), name
