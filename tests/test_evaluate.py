"""dva evaluate: the thesis' tables from one call on a run, localisation against lesions, clear refusals."""

from __future__ import annotations

import csv
import json
import shutil
import types
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from dva import MetricSpec, hookimpl
from dva.core.errors import ConfigError
from dva.core.plugins import load_catalogue

from tests.conftest import runner

PHANTOM_CLASSES = ("Normal", "Lung Opacity", "Cardiomegaly")


class MeanGap:
    """A set measure for tests: the gap between the two sets' mean intensities (instant, exact)."""

    def distance(self, paths_a, paths_b):
        return abs(mean_intensity(paths_a) - mean_intensity(paths_b))


def mean_intensity(paths) -> float:
    return float(np.mean([np.asarray(Image.open(p).convert("L"), dtype=np.float64).mean() for p in paths]))


@pytest.fixture(scope="module")
def catalogue_with_mean_gap():
    def register_metrics(register):
        register(MetricSpec(name="mean-gap", implementation="tests.test_evaluate:MeanGap", scope="sets",
                            columns=("mean_gap",)))

    plugin = types.ModuleType("mean_gap_plugin")
    plugin.register_metrics = hookimpl(register_metrics)
    return load_catalogue(entry_points=False, extra=[plugin])


run_tiny = runner(steps=4)


def dva_run(catalogue, model: Path, inputs: list[Path], out: Path, **overrides) -> Path:
    """A finished run of ``model`` on ``inputs`` into ``out``."""
    assert run_tiny(catalogue, inputs, out, model=str(model), **overrides).exit_code == 0
    return out


@pytest.fixture(scope="module")
def phantoms(tmp_path_factory) -> Path:
    from dva.datasets.phantoms import make_phantoms

    return make_phantoms(tmp_path_factory.mktemp("evaluate") / "phantoms", 3, 64, seed=11)


@pytest.fixture(scope="module")
def counterfactual_run(catalogue, tiny_radbert_model, phantoms, tmp_path_factory) -> Path:
    """Healthy counterfactuals of every phantom, as the thesis made of every image of its dataset."""
    inputs = [phantoms / label / "images" for label in PHANTOM_CLASSES]
    return dva_run(catalogue, tiny_radbert_model, inputs, tmp_path_factory.mktemp("evaluate") / "run")


def open_phantoms(path: Path):
    from dva.datasets.layouts import open_dataset

    return open_dataset(path)


def evaluate(catalogue, dataset_path: Path, runs: list[Path], **settings):
    from dva.evaluate.evaluation import Settings, evaluate as evaluate_runs
    from dva.evaluate.runs import read_run

    return evaluate_runs(open_phantoms(dataset_path), [read_run(r) for r in runs], Settings(**settings), catalogue)


def table(evaluation, key: str):
    return next(t for t in evaluation.tables if t.key == key)


def test_the_thesis_tables_from_one_call(catalogue_with_mean_gap, phantoms, counterfactual_run, tmp_path):
    from dva.evaluate.evaluation import write_evaluation

    result = evaluate(catalogue_with_mean_gap, phantoms, [counterfactual_run],
                      metrics=["mean-gap", "ssim", "ms-ssim", "localisation"])
    assert [t.key for t in result.tables] == ["6.1-mean-gap", "6.2-mean-gap", "6.3", "localisation", "null-test",
                                              "image-level"]

    def real(label):
        return sorted((phantoms / label / "images").glob("*.png"))

    def generated(label):
        return sorted(counterfactual_run.glob(f"{label}-*/fullsize/counterfactual.png"))

    gap = MeanGap().distance
    rows = table(result, "6.1-mean-gap").rows
    assert [row[:2] for row in rows[3:]] == [
        ["Lung Opacity (3)", "Generated Healthy from Lung Opacity (3)"],
        ["Lung Opacity (3)", "Real Healthy (3)"],
        ["", "relative absolute difference"],
    ]
    assert [row[0] for row in rows[:3]] == ["Cardiomegaly (3)", "Cardiomegaly (3)", ""], "the dataset's class order"
    assert rows[3][2] == pytest.approx(gap(real("Lung Opacity"), generated("Lung Opacity")))
    assert rows[4][2] == pytest.approx(gap(real("Lung Opacity"), real("Normal")))
    assert rows[5][2] == pytest.approx(abs(rows[4][2] - rows[3][2]))
    assert table(result, "6.2-mean-gap").rows[0] == [
        "Real Healthy (3)", "Generated Healthy from Cardiomegaly (3)",
        pytest.approx(gap(real("Normal"), generated("Cardiomegaly")))]

    similarity = table(result, "6.3")
    assert similarity.columns == ["class", "images", "SSIM", "MS-SSIM", "MS-SSIM scales"]
    assert [row[:2] for row in similarity.rows] == [["Cardiomegaly", 3], ["Lung Opacity", 3], ["Normal", 3]]
    assert all(0.0 < row[2] <= 1.0 and 0.0 < row[3] <= 1.0 for row in similarity.rows)

    out = tmp_path / "evaluation"
    write_evaluation(out, result)
    assert sorted(p.name for p in out.iterdir()) == ["evaluation.json", "per_image.csv", "tables.csv", "tables.md"]
    assert "## Table 6.1: mean-gap" in (out / "tables.md").read_text()
    document = json.loads((out / "evaluation.json").read_text())
    assert document["mode"] == "counterfactual" and document["healthy_class"] == "Normal"
    assert document["evaluated_images"] == 9 and "torch" in document["versions"]
    with open(out / "per_image.csv") as handle:
        per_image = list(csv.DictReader(handle))
    assert len(per_image) == 9 and {"input", "class", "ssim", "ms_ssim", "auroc", "lung_energy", "score_energy",
                                    "score_p99.5"} <= set(per_image[0])
    assert "## Image-level scores: Normal against each abnormal class" in (out / "tables.md").read_text()
    assert document["image_level"]["preferred"] == "p99.5"


def test_ssim_in_table_6_3_is_pytorch_msssim_on_input_and_counterfactual(catalogue, phantoms, counterfactual_run):
    import torch
    from pytorch_msssim import ssim

    result = evaluate(catalogue, phantoms, [counterfactual_run], metrics=["ssim"])
    expected = []
    for folder in sorted(counterfactual_run.glob("Lung Opacity-*")):
        pair = [np.asarray(Image.open(folder / name).convert("RGB"), dtype=np.float32).mean(-1) / 255.0
                for name in ("input.png", "counterfactual.png")]
        a, b = (torch.from_numpy(p)[None, None] for p in pair)
        expected.append(float(ssim(a, b, data_range=1.0)))
    row = next(r for r in table(result, "6.3").rows if r[0] == "Lung Opacity")
    assert row[2] == pytest.approx(np.mean(expected), abs=1e-3)


def test_a_map_equal_to_the_lesion_scores_perfectly_and_healthy_maps_are_the_null_test(
    catalogue, phantoms, counterfactual_run, tmp_path
):
    """Rewrite each Lung Opacity map as its ground-truth lesion: the measures must reach their maxima."""
    from safetensors.numpy import load_file, save_file

    run = tmp_path / "run"
    shutil.copytree(counterfactual_run, run)
    for folder in run.glob("Lung Opacity-*"):
        lesion = np.asarray(Image.open(phantoms / "Lung Opacity" / "lesions" / f"{folder.name}.png")) > 127
        maps = load_file(str(folder / "attribution.safetensors"))
        maps["attribution_fullsize"] = lesion.astype(np.float32)
        save_file(maps, str(folder / "attribution.safetensors"))
    result = evaluate(catalogue, phantoms, [run], metrics=["localisation"])
    localisation = table(result, "localisation")
    row = dict(zip(localisation.columns, next(r for r in localisation.rows if r[0] == "Lung Opacity")))
    assert row["images"] == 3
    assert row["auroc"] == pytest.approx(1.0) and row["auprc"] == pytest.approx(1.0)
    assert row["best_dice"] == pytest.approx(1.0) and row["pointing_game"] == 1.0
    null_test = table(result, "null-test")
    assert null_test.columns == ["class", "images", "energy", "relative to healthy"]
    assert null_test.rows[0][0] == "Normal" and null_test.rows[0][3] == pytest.approx(1.0)


def rewrite_maps(run: Path, value_of_class) -> None:
    """Every map of ``run`` made constant: ``value_of_class(class folder prefix)`` everywhere."""
    from safetensors.numpy import load_file, save_file

    for file in run.glob("*/attribution.safetensors"):
        maps = load_file(str(file))
        label = file.parent.name.rsplit("-", 1)[0]
        maps["attribution_fullsize"] = np.full_like(maps["attribution_fullsize"], value_of_class(label))
        save_file(maps, str(file))


def image_level_rows(result) -> dict[tuple[str, str], dict]:
    found = table(result, "image-level")
    return {(row[0], row[1]): dict(zip(found.columns, row)) for row in found.rows}


def test_image_level_auroc_is_one_when_every_sick_map_is_louder_and_chance_when_all_are_alike(
    catalogue, phantoms, counterfactual_run, tmp_path
):
    separated, alike = tmp_path / "separated", tmp_path / "alike"
    shutil.copytree(counterfactual_run, separated)
    shutil.copytree(counterfactual_run, alike)
    rewrite_maps(separated, lambda label: 0.1 if label == "Normal" else -0.4)  # the sign does not matter: |map|
    rewrite_maps(alike, lambda label: 0.2)
    rows = image_level_rows(evaluate(catalogue, phantoms, [separated], metrics=["localisation"]))
    assert set(rows) == {(method, label) for method in ("p99.5", "energy") for label in ("Cardiomegaly", "Lung Opacity")}
    assert all(row["AUROC"] == 1.0 and row["AUPRC"] == 1.0 and row["images"] == 6 for row in rows.values())
    result = evaluate(catalogue, phantoms, [alike], metrics=["localisation"])
    assert all(row["AUROC"] == 0.5 and row["AUPRC"] == pytest.approx(0.5) for row in image_level_rows(result).values())
    assert result.summary["image_level"]["methods"]["energy"]["auroc"] == 0.5


def test_a_record_score_is_preferred_over_the_map_derived_ones(catalogue, phantoms, counterfactual_run, tmp_path):
    """A calibrated run writes each image's score into record.json and the method into manifest.json."""
    run = tmp_path / "run"
    shutil.copytree(counterfactual_run, run)
    rewrite_maps(run, lambda label: 0.1 if label == "Normal" else 0.4)  # the maps separate perfectly ...
    for file in run.glob("*/record.json"):
        record = json.loads(file.read_text())
        record["score"] = 5.0 if file.parent.name.startswith("Normal") else 1.0  # ... the scores the wrong way round
        file.write_text(json.dumps(record))
    manifest = json.loads((run / "manifest.json").read_text())
    (run / "manifest.json").write_text(json.dumps({**manifest, "score_method": "test-z"}))
    result = evaluate(catalogue, phantoms, [run], metrics=["localisation"])
    found = table(result, "image-level")
    assert [row[0] for row in found.rows] == ["record (test-z)"] * 2 + ["p99.5"] * 2 + ["energy"] * 2
    rows = image_level_rows(result)
    assert rows[("record (test-z)", "Lung Opacity")]["AUROC"] == 0.0 and rows[("energy", "Lung Opacity")]["AUROC"] == 1.0
    assert result.summary["image_level"]["preferred"] == "record"
    assert {row["score"] for row in result.per_image} == {1.0, 5.0}
    without_maps = evaluate(catalogue, phantoms, [run], metrics=["ssim"])
    assert [row[0] for row in table(without_maps, "image-level").rows] == ["record (test-z)"] * 2, \
        "a record score needs no lesion masks"
    assert table(without_maps, "6.3").columns == ["class", "images", "SSIM"]


def test_the_calibrated_map_is_scored_when_asked_and_its_absence_is_one_sentence(catalogue, phantoms,
                                                                                counterfactual_run, tmp_path):
    from safetensors.numpy import load_file, save_file

    run = tmp_path / "run"
    shutil.copytree(counterfactual_run, run)
    with pytest.raises(ConfigError, match="has no calibrated map"):
        evaluate(catalogue, phantoms, [run], metrics=["localisation"], map="calibrated")
    for file in run.glob("*/attribution.safetensors"):
        maps = load_file(str(file))
        sick = not file.parent.name.startswith("Normal")
        maps["calibrated_fullsize"] = np.full_like(maps["attribution_fullsize"], 3.0 if sick else 0.0)
        save_file(maps, str(file))
    result = evaluate(catalogue, phantoms, [run], metrics=["localisation"], map="calibrated")
    assert all(row["AUROC"] == 1.0 for row in image_level_rows(result).values())
    assert result.summary["map"] == "calibrated"


def test_an_induction_run_gives_table_8_1(catalogue_with_mean_gap, tiny_radbert_model, phantoms, tmp_path):
    run = dva_run(catalogue_with_mean_gap, tiny_radbert_model, [phantoms / "Normal" / "images"], tmp_path / "induced",
                  prompt="cardiomegaly")
    result = evaluate(catalogue_with_mean_gap, phantoms, [run], metrics=["mean-gap"])
    assert result.summary["mode"] == "induction" and result.summary["induced"] == "Cardiomegaly"
    (induction,) = result.tables
    assert induction.key == "8.1-mean-gap"
    assert [row[:2] for row in induction.rows] == [["Real Cardiomegaly (3)", "Generated Cardiomegaly (3)"],
                                                   ["Real Healthy (3)", "Generated Cardiomegaly (3)"]]


def test_fid_in_table_6_1_is_the_fid_of_the_class_and_its_counterfactuals(catalogue, phantoms, counterfactual_run,
                                                                         fid_weights, tmp_path):
    """The sets are the right files (FID itself matches pytorch-fid in test_fid.py; the features are cached)."""
    from dva.metrics.fid import InceptionFeatures, fid

    cache = tmp_path / "cache"
    result = evaluate(catalogue, phantoms, [counterfactual_run], metrics=["fid"],
                      metric_options={"fid": {"weights": str(fid_weights)}}, cache_dir=str(cache))
    real = sorted((phantoms / "Lung Opacity" / "images").glob("*.png"))
    generated = sorted(counterfactual_run.glob("Lung Opacity-*/fullsize/counterfactual.png"))
    expected = fid(real, generated, InceptionFeatures(fid_weights, device="cpu", cache_dir=cache))
    row = next(r for r in table(result, "6.1").rows if r[0] == "Lung Opacity (3)")
    assert row[1] == "Generated Healthy from Lung Opacity (3)" and row[2] == pytest.approx(expected.value, rel=1e-9)


def test_a_set_of_one_image_is_refused_before_anything_is_computed(catalogue_with_mean_gap, phantoms,
                                                                   counterfactual_run, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(counterfactual_run, run)
    for folder in run.glob("Cardiomegaly-*"):
        if folder.name != "Cardiomegaly-1":
            shutil.rmtree(folder)
    with pytest.raises(ConfigError, match="at least 2 images per set .* 'Generated Healthy from Cardiomegaly' has 1"):
        evaluate(catalogue_with_mean_gap, phantoms, [run], metrics=["mean-gap"])


def test_a_run_on_other_images_is_refused(catalogue, phantoms, tiny_radbert_model, images, tmp_path):
    run = dva_run(catalogue, tiny_radbert_model, images, tmp_path / "other")
    with pytest.raises(ConfigError, match="None of the 3 generated images comes from the --real dataset"):
        evaluate(catalogue, phantoms, [run], metrics=["ssim"])


def test_localisation_without_lesion_masks_is_refused_and_skipped_by_default(catalogue, tiny_radbert_model, dataset,
                                                                             fid_weights, tmp_path):
    run = dva_run(catalogue, tiny_radbert_model, [dataset / "Lung Opacity"], tmp_path / "run")
    with pytest.raises(ConfigError, match="localisation needs ground-truth lesion masks"):
        evaluate(catalogue, dataset, [run], metrics=["localisation"])
    result = evaluate(catalogue, dataset, [run], metric_options={"fid": {"weights": str(fid_weights)}},
                      cache_dir=str(tmp_path / "cache"))
    assert [t.key for t in result.tables] == ["6.1", "6.2", "6.3"]
    assert result.summary["metrics"] == ["fid", "ssim", "ms-ssim"]
    assert any(note.startswith("localisation skipped") for note in result.notes)


def test_an_unavailable_metric_is_skipped_with_a_note(catalogue, phantoms, counterfactual_run):
    result = evaluate(catalogue, phantoms, [counterfactual_run], metrics=["xrv-fid", "ssim"])
    assert [t.key for t in result.tables] == ["6.3"]
    assert any(note.startswith("xrv-fid skipped: xrv-fid needs torchxrayvision") for note in result.notes)


def test_not_a_run_folder_and_unknown_metrics_are_named(catalogue, phantoms, tmp_path, capsys):
    from dva.cli import main
    from dva.evaluate.runs import read_run

    with pytest.raises(ConfigError, match="not a dva run folder"):
        read_run(tmp_path)
    with pytest.raises(SystemExit) as done:
        main(["evaluate", "--real", str(phantoms), "--generated", str(tmp_path), "--metrics", "ssin"])
    assert done.value.code == 2
    assert "Unknown metric 'ssin'. Did you mean 'ssim'?" in capsys.readouterr().err


def test_evaluate_from_the_command_line(phantoms, counterfactual_run, tmp_path, capsys):
    from dva.cli import main

    out = tmp_path / "tables"
    with pytest.raises(SystemExit) as done:
        main(["evaluate", "--real", str(phantoms), "--generated", str(counterfactual_run), "--metrics", "ssim,ms-ssim",
              "--within-lungs", "--out", str(out)])
    assert done.value.code == 0, capsys.readouterr().err
    shown = capsys.readouterr().out
    assert "Table 6.3: input against counterfactual (inside the lung masks)" in shown
    assert (out / "tables.md").is_file() and (out / "evaluation.json").is_file()


def test_fid_of_two_folders_from_the_command_line(phantoms, fid_weights, tmp_path, capsys):
    from dva.cli import main

    with pytest.raises(SystemExit) as done:
        main(["evaluate", "fid", str(phantoms / "Normal" / "images"), str(phantoms / "Cardiomegaly" / "images"),
              "--fid-weights", str(fid_weights), "--cache-dir", str(tmp_path / "cache"), "--json",
              str(tmp_path / "fid.json")])
    assert done.value.code == 0, capsys.readouterr().err
    result = json.loads((tmp_path / "fid.json").read_text())
    assert result["first"]["images"] == 3 and result["fid"] > 0


@pytest.mark.parametrize(("name", "perfect"), [
    ("ssim", {"ssim": 1.0}), ("ms-ssim", {"ms_ssim": 1.0}),
    ("localisation", {"auroc": 1.0, "auprc": 1.0, "best_dice": 1.0, "pointing_game": 1.0}), ("fid", {"fid": 0.0}),
])
def test_the_builtin_metrics_pass_the_conformance_kit(catalogue, name, perfect, fid_weights, tmp_path):
    from dva.testing.conformance import check_metric

    options = {"weights": str(fid_weights)} if name == "fid" else {}
    check_metric(catalogue.get("metric", name), perfect, tmp_path, options)


def test_xrv_fid_without_torchxrayvision_is_unavailable_not_broken(catalogue, tmp_path):
    import importlib.util

    from dva import MetricUnavailable
    from dva.testing.conformance import check_metric

    if importlib.util.find_spec("torchxrayvision") is not None:
        pytest.skip("torchxrayvision is installed here")

    with pytest.raises(MetricUnavailable, match="torchxrayvision"):
        check_metric(catalogue.get("metric", "xrv-fid"), {"xrv_fid": 0.0}, tmp_path)
