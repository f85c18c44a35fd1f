"""``--samples K``: K counterfactuals per image (seeds seed..seed+K-1), the map of their mean, and their spread."""

from __future__ import annotations

import json

import numpy as np
from safetensors import safe_open
from safetensors.numpy import load_file

from dva.core.registry import load_entries, resolve
from dva.core.run import run

from tests.conftest import runner

STEPS = 4
SEED = 5


dva_run = runner(steps=STEPS, seed=SEED, strength=1.0)


def maps(out, stem):
    return load_file(str(out / stem / "attribution.safetensors"))


def test_three_samples_average_three_single_runs_and_save_their_spread(catalogue, tiny_sd, images, tmp_path):
    result = dva_run(catalogue, images[:1], tmp_path / "mean", model=str(tiny_sd), samples=3, fullsize="all")
    singles = [dva_run(catalogue, images[:1], tmp_path / f"seed{SEED + k}", model=str(tiny_sd), seed=SEED + k)
               for k in range(3)]
    assert result.exit_code == 0 and all(single.exit_code == 0 for single in singles)
    single_maps = np.stack([maps(tmp_path / f"seed{SEED + k}", "scan0")["attribution"] for k in range(3)])
    assert np.abs(single_maps[0] - single_maps[1]).max() > 10 / 255, "the seeds must give different samples"
    folder = tmp_path / "mean" / "scan0"
    saved = maps(tmp_path / "mean", "scan0")
    assert np.abs(saved["attribution"] - single_maps.mean(axis=0)).max() <= 1e-4
    # input - counterfactual_k differ from each other by the counterfactuals only: same spread.
    assert np.abs(saved["uncertainty"] - single_maps.std(axis=0, ddof=1)).max() <= 1e-4
    assert saved["uncertainty_fullsize"].shape == (64, 64)
    for name in ("uncertainty.png", "fullsize/uncertainty.png", "counterfactual.png", "attribution.png"):
        assert (folder / name).is_file(), name
    with safe_open(str(folder / "attribution.safetensors"), "np") as tensors:
        assert tensors.metadata()["samples"] == "3"
    manifest = json.loads((tmp_path / "mean" / "manifest.json").read_text())
    assert manifest["samples"] == 3 and manifest["recipe"]["samples"] == 3
    assert manifest["images"][0]["samples"] == 3
    record = json.loads((folder / "record.json").read_text())
    assert record["samples"] == 3 and "uncertainty.png" in record["files"]


def test_batch_size_does_not_change_the_samples(catalogue, tiny_sd, images, tmp_path):
    """batch_size 6 puts two images' three samples in one prior call; batch_size 1 one image's three."""
    dva_run(catalogue, images, tmp_path / "one", model=str(tiny_sd), samples=3, batch_size=1)
    dva_run(catalogue, images[::-1], tmp_path / "six", model=str(tiny_sd), samples=3, batch_size=6)
    for image in images:
        alone, batched = maps(tmp_path / "one", image.stem), maps(tmp_path / "six", image.stem)
        for key in ("attribution", "uncertainty"):
            assert np.abs(alone[key] - batched[key]).max() <= 1 / 255, key


def test_one_sample_writes_what_it_always_wrote(catalogue, tiny_sd, images, tmp_path):
    dva_run(catalogue, images[:1], tmp_path / "out", model=str(tiny_sd))
    record = json.loads((tmp_path / "out" / "scan0" / "record.json").read_text())
    assert "samples" not in record and not any("uncertainty" in name for name in record["files"])
    assert set(maps(tmp_path / "out", "scan0")) == {"attribution", "attribution_fullsize"}


def test_the_uncertainty_is_zero_outside_the_mask(catalogue, tiny_sd, images, tmp_path):
    from PIL import Image

    mask = np.zeros((64, 64), np.uint8)
    mask[16:48, 8:40] = 255
    Image.fromarray(mask).save(tmp_path / "mask.png")
    run(resolve(load_entries(), catalogue, "default", {"steps": STEPS, "seed": SEED, "samples": 2, "model": str(tiny_sd)}),
        [str(images[0])], tmp_path / "out", catalogue, mask=str(tmp_path / "mask.png"))
    saved = maps(tmp_path / "out", "scan0")
    assert np.all(saved["uncertainty"][mask == 0] == 0) and saved["uncertainty"][mask > 0].max() > 0
    assert np.all(saved["uncertainty_fullsize"][mask == 0] == 0)
