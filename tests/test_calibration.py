"""Normative calibration (dva calibrate) and the calibrated maps and image-level scores of dva run."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from safetensors.numpy import load_file

from dva.core import calibration, manifest, weights
from dva.core.calibrate import calibrate
from dva.core.errors import ConfigError
from dva.core.model_folder import bundled_model
from dva.core.registry import load_entries, resolve
from tests.conftest import runner

dva_run = runner(steps=2, seed=3, strength=0.5, guidance_scale=2.0)


def phantom_twins(index: int, size: int = 64, seed: int = 5):
    """A Lung Opacity phantom and its healthy twin: the same anatomy and texture, no opacity."""
    from dva.datasets.phantoms import _Renderer

    sick = _Renderer("Lung Opacity", index, size, seed).render()
    renderer = _Renderer("Lung Opacity", index, size, seed)
    renderer.label = "Normal"
    return sick, renderer.render()


def write_scans(folder: Path, phantoms: dict[str, object]) -> tuple[Path, Path]:
    """The phantoms' images and lung masks as PNGs in ``folder/images`` and ``folder/masks``."""
    for kind in ("images", "masks"):
        (folder / kind).mkdir(parents=True, exist_ok=True)
    for name, phantom in phantoms.items():
        Image.fromarray(phantom.image).save(folder / "images" / f"{name}.png")
        Image.fromarray(phantom.lung_mask.astype(np.uint8) * 255).save(folder / "masks" / f"{name}.png")
    return folder / "images", folder / "masks"


def healthy_scans(folder: Path, count: int, size: int = 64) -> tuple[Path, Path]:
    from dva.datasets.phantoms import make_phantom

    return write_scans(folder, {f"h{i}": make_phantom("Normal", i, size, seed=77) for i in range(1, count + 1)})


@pytest.fixture
def model_copy(tiny_sd, tmp_path) -> Path:
    return Path(shutil.copytree(tiny_sd, tmp_path / "model"))


def recipe_for(catalogue, model: Path, entry: str = "default", **settings):
    return resolve(load_entries(), catalogue, entry, {"model": str(model), **settings})


def synthetic_healthy(count: int, seed: int = 0, size: int = 32) -> tuple[np.ndarray, list]:
    """Healthy maps: a fixed background (what the model cannot reproduce) plus noise, and that background."""
    rng = np.random.default_rng(seed)
    background = np.linspace(0.02, 0.1, size * size).reshape(size, size)
    return background, [(background + 0.01 * rng.standard_normal((size, size)), None) for _ in range(count)]


def test_a_healthy_map_calibrates_to_near_zero_and_a_lesion_stands_out():
    background, healthy = synthetic_healthy(40)
    made = calibration.compute(healthy, {"recipe_key": "k"})
    assert np.allclose(made.mean, background, atol=0.01) and made.threshold > 0
    _, unseen = synthetic_healthy(1, seed=1)
    quiet, quiet_score = made.assess(unseen[0][0])
    loud_map = unseen[0][0].copy()
    loud_map[8:14, 8:14] += 0.3
    loud, loud_score = made.assess(loud_map)
    assert np.abs(unseen[0][0]).mean() > 0.05, "the raw map of a healthy scan is its background"
    assert quiet.mean() < 0.02 and np.mean(quiet > 0) < 0.1, "its calibrated map is zero but for specks"
    assert loud[8:14, 8:14].mean() > 5 and loud_score > 10 and abs(quiet_score) < 3
    assert made.percentile(loud_score) == 1.0


def test_k_leaves_about_the_chosen_share_of_unseen_healthy_pixels_above_zero():
    _, healthy = synthetic_healthy(40)
    made = calibration.compute(healthy, {"recipe_key": "k"})
    _, unseen = synthetic_healthy(20, seed=2)
    share = np.mean([np.mean(made.assess(signed)[0] > 0) for signed, _ in unseen])
    assert 0.3 * calibration.HEALTHY_SHARE < share < 3 * calibration.HEALTHY_SHARE
    scores = [made.assess(signed)[1] for signed, _ in unseen]
    assert abs(np.mean(scores)) < 1.0, "unseen healthy scans score about 0: the calibration's scores were left out"


def test_a_scan_loud_all_over_scores_below_one_with_a_focal_lesion():
    """The score is the focal excess: a map the model reproduced worse everywhere is not a lesion."""
    _, healthy = synthetic_healthy(40)
    made = calibration.compute(healthy, {"recipe_key": "k"})
    _, unseen = synthetic_healthy(1, seed=3)
    everywhere = unseen[0][0] * 1.6
    focal = unseen[0][0].copy()
    focal[20:26, 4:10] += 0.15
    assert made.assess(everywhere)[0].mean() > made.assess(focal)[0].mean(), "more calibrated area ..."
    assert made.assess(focal)[1] > made.assess(everywhere)[1], "... but a lower score"


def test_a_calibration_of_the_old_format_is_ignored_or_refused_with_one_sentence(tmp_path):
    from safetensors.numpy import save_file

    folder = tmp_path / "model" / calibration.FOLDER
    folder.mkdir(parents=True)
    save_file({"abs_mean": np.zeros((4, 4), np.float32), "abs_std": np.ones((4, 4), np.float32),
               "healthy_scores": np.zeros(3, np.float32)}, str(folder / calibration.TENSORS))
    (folder / calibration.INFO).write_text(json.dumps({"format_version": 1, "recipe_key": "k"}))
    header = {"model": {"location": str(tmp_path / "model")}, "recipe": {}, "weights": {}, "prompt": None}
    used, status = calibration.for_run(header, "auto")
    assert used is None and status["calibrated"] is False
    reads = f"is of format 1, and this dva reads format {calibration.FORMAT_VERSION} only"
    assert f"{reads}, so it is not used" in status["reason"]
    with pytest.raises(ConfigError, match="--calibration require: the calibration in .* is of format 1"):
        calibration.for_run(header, "require")
    with pytest.raises(ConfigError, match=f"{reads}; rerun dva calibrate"):
        calibration.load(str(tmp_path / "model"))


def test_too_few_healthy_scans_are_refused():
    _, healthy = synthetic_healthy(2)
    with pytest.raises(ConfigError, match="at least 3 healthy images"):
        calibration.compute(healthy, {"recipe_key": "k"})


def test_calibration_enters_fingerprint_and_run_writes_calibrated_outputs(catalogue, model_copy, tmp_path):
    images, masks = healthy_scans(tmp_path / "healthy", 3)
    first = dva_run(catalogue, [images], tmp_path / "out", model=str(model_copy), mask=str(masks))
    before = json.loads((tmp_path / "out" / "manifest.json").read_text())
    assert before["calibration"]["calibrated"] is False and "score_method" not in before
    assert all("score" not in image for image in before["images"])
    assert set(load_file(str(tmp_path / "out" / "h1" / "attribution.safetensors"))) == {
        "attribution", "attribution_fullsize", "mask"}

    recipe = recipe_for(catalogue, model_copy, steps=2, seed=3, strength=0.5, guidance_scale=2.0)
    folder, made = calibrate(recipe, [str(images)], catalogue, str(masks))
    assert folder == model_copy / "calibration" and made.info["images"] == 3
    assert json.loads((folder / calibration.INFO).read_text())["recipe_key"] == made.info["recipe_key"]

    second = dva_run(catalogue, [images], tmp_path / "out", model=str(model_copy), mask=str(masks))
    assert second.header["fingerprint"] != first.header["fingerprint"]
    assert second.count("done") == 3  # a recalibrated model does not resume the old outputs
    after = json.loads((tmp_path / "out" / "manifest.json").read_text())
    assert after["calibration"]["calibrated"] is True and after["score_method"] == calibration.SCORE_METHOD
    record = json.loads((tmp_path / "out" / "h1" / "record.json").read_text())
    assert isinstance(record["score"], float) and all(isinstance(i["score"], float) for i in after["images"])
    tensors = load_file(str(tmp_path / "out" / "h1" / "attribution.safetensors"))
    assert tensors["calibrated"].shape == (64, 64) and tensors["calibrated_fullsize"].shape == (64, 64)
    assert (tmp_path / "out" / "h1" / "calibrated.png").is_file()
    assert "score" in (tmp_path / "out" / "report.html").read_text()

    third = dva_run(catalogue, [images], tmp_path / "out", model=str(model_copy), mask=str(masks))
    assert third.count("skipped") == 3
    resumed = json.loads((tmp_path / "out" / "manifest.json").read_text())
    assert [i["score"] for i in resumed["images"]] == [i["score"] for i in after["images"]]


def test_mismatched_calibration_is_refused_or_left_unused(catalogue, model_copy, tmp_path):
    images, masks = healthy_scans(tmp_path / "healthy", 3)
    calibrate(recipe_for(catalogue, model_copy, steps=2, strength=0.5), [str(images)], catalogue, str(masks))
    with pytest.raises(ConfigError, match="another recipe"):
        dva_run(catalogue, [images], tmp_path / "out", model=str(model_copy), calibration="require", steps=3)
    result = dva_run(catalogue, [images], tmp_path / "out", model=str(model_copy), steps=3)
    assert result.header["calibration"]["calibrated"] is False
    assert "another recipe" in result.header["calibration"]["reason"]
    assert not (tmp_path / "out" / "h1" / "calibrated.png").exists()
    assert all("score" not in job.summary() for job in result.jobs)


def test_a_calibration_made_with_lung_masks_is_not_used_by_a_run_without_them(catalogue, model_copy, tmp_path):
    images, masks = healthy_scans(tmp_path / "healthy", 3)
    calibrate(recipe_for(catalogue, model_copy, steps=2, strength=0.5, guidance_scale=2.0, seed=3), [str(images)],
              catalogue, str(masks))
    settings = {"model": str(model_copy)}  # the module's dva_run: steps 2, strength 0.5, guidance 2
    with pytest.raises(ConfigError, match="made with lung masks and this run has none"):
        dva_run(catalogue, [images], tmp_path / "out", calibration="require", **settings)
    unmasked = dva_run(catalogue, [images], tmp_path / "out", **settings)
    assert unmasked.header["calibration"]["calibrated"] is False and "pass --mask" in unmasked.header["calibration"]["reason"]
    masked = dva_run(catalogue, [images], tmp_path / "masked", mask=str(masks), **settings)
    assert masked.header["calibration"]["calibrated"] is True


def test_a_tiled_recipe_is_refused_before_anything_runs(catalogue, model_copy, tmp_path):
    images, masks = healthy_scans(tmp_path / "healthy", 3)
    with pytest.raises(ConfigError, match="calibrate with an entry whose tile is off"):
        calibrate(recipe_for(catalogue, model_copy, steps=2, strength=0.5, tile="auto"), [str(images)], catalogue,
                  str(masks))
    assert not (model_copy / calibration.FOLDER).exists()


def test_without_calibration_the_fingerprint_is_as_before(catalogue, tiny_sd, images, tmp_path):
    result = dva_run(catalogue, images[:1], tmp_path / "out", model=str(tiny_sd))
    header = result.header
    old_parts = ("unet", "vae", "scheduler", "dva.json")
    old_weights = {**header["weights"], "model": weights.identify(str(tiny_sd), old_parts)}
    old_defaults = (("samples", 1), ("reference", "input"), ("revision", None))
    kept = {k: v for k, v in header["recipe"].items() if (k, v) not in old_defaults and k != "calibration"}
    expected = manifest.fingerprint(kept, {"dtype": header["dtype"], "device": "cpu", "prompt": header["prompt"],
                                           "weights": weights.digest(old_weights)})
    assert header["fingerprint"] == expected


def test_bundled_model_calibration_quiets_healthy_and_scores_the_lesion_higher(catalogue, tmp_path):
    """The bundled tiny model (weights copied, calibrated here on 6 healthy phantoms at 6 steps)."""
    model = tmp_path / "tiny"
    shutil.copytree(bundled_model(), model, ignore=shutil.ignore_patterns("calibration"))
    settings = {"steps": 6}
    images, masks = healthy_scans(tmp_path / "healthy", 6)
    calibrate(recipe_for(catalogue, model, "tiny-phantom", **settings), [str(images)], catalogue, str(masks))
    sick, healthy = phantom_twins(5)
    pair, pair_masks = write_scans(tmp_path / "pair", {"sick": sick, "healthy": healthy})
    recipe = recipe_for(catalogue, model, "tiny-phantom", **settings)
    from dva.core.run import run

    result = run(recipe, [str(pair)], tmp_path / "out", catalogue, str(pair_masks))
    scores = {job.key: job.summary()["score"] for job in result.jobs}
    assert scores["sick"] > scores["healthy"]
    tensors = load_file(str(tmp_path / "out" / "healthy" / "attribution.safetensors"))
    lungs = tensors["mask"].astype(bool)
    raw = np.abs(tensors["attribution"][lungs])
    calibrated = tensors["calibrated"][lungs]
    assert np.mean(raw > 0.01) > 0.5  # the raw map of a healthy scan is not zero: the model's background
    assert np.mean(calibrated > 0) < 0.1  # the calibrated one is zero but for specks


def test_the_demo_lists_image_scores_highest_first_and_nothing_for_an_uncalibrated_run(tmp_path):
    import json

    from dva.testing.demo import image_scores

    images = [{"output": "Normal-1", "score": 1.5}, {"output": "Lung Opacity-7", "score": 8.8}, {"output": "x"}]
    (tmp_path / "manifest.json").write_text(json.dumps({"images": images}))
    assert image_scores(tmp_path) == [("Lung Opacity-7", 8.8), ("Normal-1", 1.5)]
    (tmp_path / "manifest.json").write_text(json.dumps({"images": [{"output": "x"}]}))
    assert image_scores(tmp_path) == []


def test_the_report_shows_each_score_and_sorts_by_it_in_the_page(tmp_path):
    from dva.core.report import write_report

    images = [{"output": "healthy", "status": "done", "score": 1.5},
              {"output": "sick", "status": "done", "score": 8.25},
              {"output": "unscored", "status": "skipped"}]
    page = write_report(tmp_path, {"recipe": {}}, images).read_text()
    assert 'data-order="0" data-score="1.5"' in page and 'data-order="1" data-score="8.25"' in page
    assert 'data-order="2" data-score=""' in page
    assert page.index(">healthy<") < page.index(">sick<"), "input order until the reader sorts"
    assert "dvaSort" in page and "sort by score" in page
    assert "dvaSort" not in write_report(tmp_path, {"recipe": {}}, images[2:]).read_text(), "no scores, no sorting"


@pytest.mark.parametrize("calibration, said", [
    ({"calibrated": True, "images": 50}, "calibrated maps and image scores (against 50 healthy scans)"),
    ({"calibrated": False, "reason": "the model folder m has no calibration"}, "not calibrated: the model folder m"),
])
def test_the_run_summary_says_whether_maps_are_calibrated(calibration, said, tmp_path):
    from types import SimpleNamespace

    from rich.console import Console

    from dva.cli.run import _summary

    console = Console(record=True, width=200)
    result = SimpleNamespace(header={"calibration": calibration}, out=tmp_path, report=tmp_path / "report.html",
                             count=lambda status: 0)
    _summary(console, result)
    assert said in console.export_text()
