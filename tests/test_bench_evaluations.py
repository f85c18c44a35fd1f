"""benchmarks/bench_evaluations.py: the UNet evaluations it charges per image are the ones the UNet really runs."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from tests.conftest import runner

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

from bench_evaluations import Setting, frontier, steps_for  # noqa: E402

dva_run = runner(seed=1)

SETTINGS = (
    Setting("sdedit", 0.5, 8, 4.0, "input", "pndm"),  # PNDM repeats one timestep
    Setting("sdedit", 0.5, 6, 4.0, "reconstruction", "dpm-solver++", samples=2),
    Setting("sdedit", 0.5, 6, 1.0, "input", "unipc"),  # no classifier-free guidance: one evaluation per call
    Setting("ddim-inversion", 0.6, 7, 4.0, "reconstruction"),  # the reconstruction reuses the inversion
    Setting("ddim-inversion", 0.6, 7, 1.0, "input"),
)


@pytest.fixture
def unet_evaluations(monkeypatch):
    """A counter of the images the UNet's forward saw (one per entry of each batch it was called on)."""
    from diffusers import UNet2DConditionModel

    seen = {"images": 0}
    forward = UNet2DConditionModel.forward

    def counting(self, sample, *args, **kwargs):
        seen["images"] += sample.shape[0]
        return forward(self, sample, *args, **kwargs)

    monkeypatch.setattr(UNet2DConditionModel, "forward", counting)
    return seen


@pytest.mark.parametrize("setting", SETTINGS, ids=lambda s: s.label)
def test_the_evaluations_charged_per_image_are_what_the_unet_ran(setting, catalogue, tiny_sd, images, tmp_path,
                                                                   unet_evaluations):
    out = tmp_path / "out"
    result = dva_run(catalogue, images[:2], out, model=str(tiny_sd), **setting.overrides())
    assert result.count("failed") == 0
    header = json.loads((out / "manifest.json").read_text())
    assert unet_evaluations["images"] == 2 * header["unet_evaluations"]


def test_the_step_count_gives_the_calls_asked_for():
    assert [int(steps_for(0.6, calls) * 0.6) for calls in (1, 2, 3, 4, 16)] == [1, 2, 3, 4, 16]


def test_the_frontier_keeps_only_settings_nothing_beats_for_as_few_evaluations():
    rows = [{"setting": name, "evaluations": cost, "auprc": quality, "calibrated": False}
            for name, cost, quality in (("a", 4, 0.3), ("b", 8, 0.2), ("c", 16, 0.5), ("d", 128, 0.45))]
    rows.append({"setting": "c, calibrated", "evaluations": 16, "auprc": 0.9, "calibrated": True})
    assert [row["setting"] for row in frontier(rows)] == ["a", "c"]


def test_results_of_other_settings_in_the_output_file_are_refused_not_overwritten(tmp_path):
    from bench_evaluations import previous_rows

    path = tmp_path / "sweep.json"
    path.write_text(json.dumps({"settings": {"seed": 6174, "n": 10, "plan": "sweep"}, "rows": [{"setting": "a"}]}))
    assert previous_rows(path, {"seed": 6174, "n": 10, "plan": "confirm"}) == [{"setting": "a"}]
    with pytest.raises(SystemExit, match="other settings \\(seed\\)"):
        previous_rows(path, {"seed": 1729, "n": 10, "plan": "confirm"})
