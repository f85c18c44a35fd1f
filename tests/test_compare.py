"""dva compare: every combination run once with components loaded once, evaluated, tabled, shown and plotted."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
from PIL import Image


@pytest.fixture(scope="module")
def phantoms(tmp_path_factory) -> Path:
    from dva.datasets.phantoms import make_phantoms

    return make_phantoms(tmp_path_factory.mktemp("compare") / "phantoms", 2, 64, seed=21,
                         classes=["Normal", "Lung Opacity"])


def compare(args: list[str], capsys) -> int:
    from dva.cli import main

    with pytest.raises(SystemExit) as done:
        main(["compare", *args])
    return done.value.code


def test_every_combination_is_run_evaluated_and_shown(tiny_radbert_model, phantoms, tmp_path, capsys, monkeypatch):
    import dva.core.runtime as runtime

    loads = []
    original = runtime.load_diffusion_parts
    monkeypatch.setattr(runtime, "load_diffusion_parts", lambda *a: loads.append(a) or original(*a))
    out = tmp_path / "compare"
    code = compare([str(phantoms / "Lung Opacity" / "images"), str(phantoms / "Normal" / "images"),
                    "--model", str(tiny_radbert_model), "--schedulers", "pndm,ddim", "--strength", "0.3,0.6",
                    "--steps", "4", "--real", str(phantoms), "--metrics", "ssim,localisation", "--out", str(out)],
                   capsys)
    assert code == 0, capsys.readouterr().err
    assert len(loads) == 1, "the UNet and VAE are loaded once for all four combinations"
    document = json.loads((out / "comparison.json").read_text())
    assert [(c["scheduler"], c["strength"]) for c in document["combinations"]] == [
        ("pndm", 0.3), ("pndm", 0.6), ("ddim", 0.3), ("ddim", 0.6)]
    assert all(c["error"] is None and c["images"] == 4 for c in document["combinations"])
    assert all({"ssim", "auprc", "best_dice", "null_ratio"} <= set(c["summary"]) for c in document["combinations"])
    assert document["table"]["columns"][:4] == ["scheduler", "strength", "images", "s/image"]
    assert sorted(p.name for p in (out / "runs").iterdir()) == ["ddim_s0.3", "ddim_s0.6", "pndm_s0.3", "pndm_s0.6"]
    with open(out / "comparison.csv") as handle:
        assert {row["row"] for row in csv.DictReader(handle)} == {"0", "1", "2", "3"}
    with Image.open(out / "contact_sheet.png") as sheet:
        assert sheet.size == (128 + 4 * 2 * 128, 36 + 4 * 128), "one row per input, two cells per combination"
    page = (out / "contact_sheet.html").read_text()
    assert page.count('alt="input"') == 4 and "pndm · strength 0.3" in page
    assert (out / "plots" / "auprc_vs_strength.png").is_file()
    assert "Comparison of combinations" in capsys.readouterr().out


def test_a_failing_combination_is_reported_and_the_others_complete(tiny_radbert_model, images, tmp_path, capsys):
    out = tmp_path / "compare"
    code = compare([str(p) for p in images] + ["--model", str(tiny_radbert_model), "--encoders", "radbert,biobert",
                                               "--steps", "2", "--out", str(out)], capsys)
    assert code == 1
    combinations = json.loads((out / "comparison.json").read_text())["combinations"]
    assert combinations[0]["error"] is None and combinations[0]["summary"]["ssim"] > 0
    assert "trained with encoder 'radbert', not 'biobert'" in combinations[1]["error"]
    assert (out / "contact_sheet.png").is_file()


def test_a_misspelled_name_fails_before_anything_runs(tiny_radbert_model, images, tmp_path, capsys):
    out = tmp_path / "compare"
    code = compare([str(images[0]), "--model", str(tiny_radbert_model), "--priors", "sdedit,controlnet-cany",
                    "--out", str(out)], capsys)
    assert code == 2
    assert "Unknown prior 'controlnet-cany'. Did you mean 'controlnet-canny'?" in capsys.readouterr().err
    assert not out.exists()


def bert_folder(folder: Path, seed: int) -> Path:
    """Stock tiny RadBERT-family weights (32 wide, as the tiny UNets), saved with their tokenizer."""
    from dva.plugins.encoders import BUILTIN_ENCODERS

    encoder = next(spec for spec in BUILTIN_ENCODERS if spec.name == "radbert").create(seed=seed)
    encoder.model.save_pretrained(folder)
    encoder.tokenizer.save_pretrained(folder)
    return folder


def test_each_encoder_loads_its_own_weights_and_each_row_names_them(tiny_sd, images, tmp_path, capsys):
    radbert, biobert = bert_folder(tmp_path / "RadBERT", seed=1), bert_folder(tmp_path / "BioBERT", seed=2)
    registry = tmp_path / "registry.toml"
    registry.write_text(f'[entries.mine]\nextends = "default"\nencoder = {{ name = "radbert", path = "{radbert}" }}\n')
    common = [str(images[0]), "--entry", "mine", "--registry", str(registry), "--model", str(tiny_sd), "--steps", "2"]

    code = compare([*common, "--encoders", "radbert,biobert", "--out", str(tmp_path / "shared")], capsys)
    rows = json.loads((tmp_path / "shared" / "comparison.json").read_text())["combinations"]
    assert code == 1 and rows[0]["error"] is None
    assert "Cannot load the biobert encoder from 'dmis-lab/biobert-base-cased-v1.2'" in rows[1]["error"], \
        "BioBERT has no weights here: its row fails rather than running RadBERT's"

    out = tmp_path / "own"
    code = compare([*common, "--encoders", f"radbert,biobert={biobert}", "--out", str(out)], capsys)
    assert code == 0, capsys.readouterr().err
    used = [row["encoder_used"] for row in json.loads((out / "comparison.json").read_text())["combinations"]]
    assert [(u["encoder"], u["source"], u["paired"]) for u in used] == [
        ("radbert", str(radbert), False), ("biobert", str(biobert), False)]
    with open(out / "comparison.csv") as handle:
        cells = {(row["row"], row["column"]): row["value"] for row in csv.DictReader(handle)}
    assert cells[("0", "encoder source")] == str(radbert) and cells[("1", "encoder source")] == str(biobert)
    assert cells[("1", "trained pair")] == "NO"
    assert (out / "runs" / "radbert" / "scan0" / "counterfactual.png").read_bytes() != \
        (out / "runs" / "biobert" / "scan0" / "counterfactual.png").read_bytes()
    assert "WARNING: Encoder not trained with this model" in capsys.readouterr().err


def test_each_prior_gets_its_own_options(catalogue):
    from dva.cli.compare import component_options
    from dva.evaluate.compare import grid, resolve_all

    names, options = component_options(None, (), ("controlnet-canny.controlnet=/models/cn",
                                                  "controlnet-canny.low_threshold=50"), [])
    combinations = grid(names, ["sdedit", "controlnet-canny"], [], [0.4], [])
    sdedit, controlnet = resolve_all(combinations, "default", (), catalogue, {}, options)
    assert sdedit.prior_options["strength"] == 0.4
    assert not {"controlnet", "low_threshold"} & set(sdedit.prior_options), "controlnet-canny's options only"
    assert controlnet.prior_options["controlnet"] == "/models/cn" and controlnet.prior_options["low_threshold"] == 50
    assert controlnet.prior_options["strength"] == 0.4


@pytest.mark.parametrize("flags, message", [
    (["--encoders", "radbert=/a", "--encoder-option", "radbert.path=/b"], "The encoder 'radbert' has two paths"),
    (["--encoders", "radbert", "--encoder-option", "biobert.path=/b"], "no combination uses it"),
    (["--prior-option", "controlnet-canny.low_threshold=50"], "Options are given for the prior 'controlnet-canny'"),
    (["--strength", "0.3,0.6", "--prior-option", "sdedit.strength=0.5"], "give them with --strength only"),
    (["--encoders", "radbert=/a,radbert=/b"], "names radbert twice"),
])
def test_options_for_no_compared_component_or_given_twice_are_refused(flags, message, tiny_radbert_model, images,
                                                                     tmp_path, capsys):
    out = tmp_path / "compare"
    code = compare([str(images[0]), "--model", str(tiny_radbert_model), *flags, "--out", str(out)], capsys)
    assert code == 2 and message in capsys.readouterr().err
    assert not out.exists()


def test_a_second_compare_into_the_same_folder_reuses_the_runs_and_gives_the_same_tables(
        tiny_radbert_model, images, tmp_path, capsys):
    out = tmp_path / "compare"
    args = [*(str(p) for p in images[:2]), "--model", str(tiny_radbert_model), "--strength", "0.3,0.6",
            "--steps", "2", "--out", str(out)]
    assert compare(args, capsys) == 0
    first = {name: (out / name).read_text() for name in ("comparison.csv", "comparison.md")}
    first_json = json.loads((out / "comparison.json").read_text())
    made = {p: p.stat().st_mtime_ns for p in (out / "runs").rglob("counterfactual.png")}
    assert compare(args, capsys) == 0, capsys.readouterr().err
    assert {name: (out / name).read_text() for name in first} == first
    again = json.loads((out / "comparison.json").read_text())
    assert again["table"] == first_json["table"] and again["combinations"] == first_json["combinations"]
    assert {p: p.stat().st_mtime_ns for p in made} == made, "no image was generated again"
    assert all(json.loads((out / "runs" / s / "manifest.json").read_text())["counts"] == {"skipped": 2}
               for s in ("s0.3", "s0.6"))


def outcome(strength: float, error: str | None = None, **summary: float):
    from dva.evaluate.compare import Combination, Outcome

    return Outcome(Combination(strength=strength), Path(f"s{strength}"), error=error, images=2, summary=summary)


def test_rank_by_orders_the_rows_best_first_and_marks_the_best():
    from dva.evaluate.compare import comparison_table
    from dva.evaluate.tables import to_markdown

    outcomes = [outcome(0.3, auprc=0.2, null_ratio=0.9, image_auroc=0.6),
                outcome(0.5, auprc=0.5, null_ratio=0.4, image_auroc=0.9),
                outcome(0.7, error="it failed"),
                outcome(0.9, auprc=0.4, null_ratio=0.6, image_auroc=0.7)]
    unranked = comparison_table(outcomes)
    assert [row[0] for row in unranked.rows] == [0.3, 0.5, 0.7, 0.9] and unranked.marked is None
    table = comparison_table(outcomes, "auprc")
    assert table.columns[:2] == ["rank", "strength"] and "image AUROC" in table.columns
    assert [row[:2] for row in table.rows] == [[1, 0.5], [2, 0.9], [3, 0.3], ["-", 0.7]], "failed rows last"
    assert table.marked == 0 and "ranked by AUPRC (higher is better)" in table.title
    assert "| **1** | **0.5000** | **2** |" in to_markdown([table])
    lower = comparison_table(outcomes, "null_ratio")
    assert [row[1] for row in lower.rows] == [0.5, 0.9, 0.3, 0.7] and "lower is better" in lower.title
    tied = comparison_table([*outcomes, outcome(1.1, auprc=0.5)], "auprc")
    assert [row[:2] for row in tied.rows[:3]] == [[1, 0.5], [1, 1.1], [3, 0.9]], "ties share a rank"
    assert tied.notes[0] == "Best by AUPRC: strength 0.5 (0.5000), tied with 1 more."


@pytest.mark.parametrize("flags, message", [
    (["--rank-by", "auprcc"], "--rank-by auprcc: no such measure; choose one of ssim, ms_ssim, fid,"),
    (["--rank-by", "image_auroc"], "--rank-by image_auroc needs the labelled dataset"),
])
def test_an_unknown_or_unmeasurable_rank_by_is_refused_before_anything_runs(flags, message, tiny_radbert_model,
                                                                          images, tmp_path, capsys):
    out = tmp_path / "compare"
    code = compare([str(images[0]), "--model", str(tiny_radbert_model), *flags, "--out", str(out)], capsys)
    error = capsys.readouterr().err
    assert code == 2 and message in error and error.count(". ") == 0
    assert not out.exists()


def test_compare_ranks_by_image_auroc_on_a_phantom_set(tiny_radbert_model, phantoms, tmp_path, capsys):
    out = tmp_path / "compare"
    code = compare([str(phantoms / "Lung Opacity" / "images"), str(phantoms / "Normal" / "images"),
                    "--model", str(tiny_radbert_model), "--strength", "0.3,0.6", "--steps", "2", "--real",
                    str(phantoms), "--metrics", "localisation", "--rank-by", "image_auroc", "--out", str(out)], capsys)
    assert code == 0, capsys.readouterr().err
    document = json.loads((out / "comparison.json").read_text())
    assert document["rank_by"] == "image_auroc"
    combinations = document["combinations"]
    assert all(0.0 <= c["summary"]["image_auroc"] <= 1.0 and c["image_score"] == "p99.5" for c in combinations)
    assert sorted(c["rank"] for c in combinations) in ([1, 2], [1, 1])
    table = document["table"]
    assert table["columns"][0] == "rank" and [row[0] for row in table["rows"]] == sorted(c["rank"] for c in combinations)
    column = table["columns"].index("image AUROC")
    assert table["rows"][0][column] >= table["rows"][1][column]
    assert "null energy ratio" in table["columns"]
    assert "ranked by image AUROC" in capsys.readouterr().out


def flat_masks(phantoms: Path, folder: Path) -> Path:
    """Every class's lung masks of a phantom set in one folder (``--mask`` matches them to inputs by name)."""
    import shutil

    folder.mkdir(parents=True, exist_ok=True)
    for mask in phantoms.glob("*/masks/*.png"):
        shutil.copy(mask, folder / mask.name)
    return folder


def test_a_lung_zone_region_without_masks_is_refused_before_anything_runs(tiny_radbert_model, phantoms, tmp_path,
                                                                          capsys):
    out = tmp_path / "compare"
    code = compare([str(phantoms / "Normal" / "images"), "--model", str(tiny_radbert_model), "--strength", "0.3,0.6",
                    "--region", "left upper", "--out", str(out)], capsys)
    error = capsys.readouterr().err
    assert code == 2 and "--region 'left upper' is a lung zone cut from each image's lung mask" in error
    assert "needs --mask" in error and not out.exists()


def test_region_is_passed_to_every_combination(tiny_radbert_model, phantoms, tmp_path, capsys):
    out = tmp_path / "compare"
    code = compare([str(phantoms / "Normal" / "images"), "--model", str(tiny_radbert_model), "--strength", "0.3,0.6",
                    "--steps", "2", "--region", "left-upper", "--mask", str(flat_masks(phantoms, tmp_path / "masks")),
                    "--out", str(out)], capsys)
    assert code == 0, capsys.readouterr().err
    for run in ("s0.3", "s0.6"):
        recipe = json.loads((out / "runs" / run / "manifest.json").read_text())["recipe"]
        assert recipe["prior_options"]["region"] == "left-upper" and recipe["prior_options"]["strength"] in (0.3, 0.6)


def test_calibration_applies_to_the_combination_it_was_made_for_and_rows_rank_by_null_ratio(
        tiny_sd, catalogue, phantoms, tmp_path, capsys):
    import shutil

    from dva.core.calibrate import calibrate
    from dva.core.registry import load_entries, resolve
    from dva.datasets.phantoms import make_phantom

    model = Path(shutil.copytree(tiny_sd, tmp_path / "model"))
    healthy = tmp_path / "healthy"
    for kind in ("images", "masks"):
        (healthy / kind).mkdir(parents=True)
    for index in range(1, 4):
        phantom = make_phantom("Normal", index, 64, seed=77)
        Image.fromarray(phantom.image).save(healthy / "images" / f"h{index}.png")
        Image.fromarray(phantom.lung_mask.astype("uint8") * 255).save(healthy / "masks" / f"h{index}.png")
    recipe = resolve(load_entries(), catalogue, "default", {"model": str(model), "steps": 2, "strength": 0.5})
    calibrate(recipe, [str(healthy / "images")], catalogue, str(healthy / "masks"))

    masks = flat_masks(phantoms, tmp_path / "masks")
    inputs = [str(phantoms / "Lung Opacity" / "images"), str(phantoms / "Normal" / "images"), "--model", str(model),
              "--strength", "0.5,0.3", "--steps", "2", "--mask", str(masks), "--real", str(phantoms),
              "--metrics", "localisation", "--rank-by", "null_ratio"]
    assert compare([*inputs, "--out", str(tmp_path / "auto")], capsys) == 0, capsys.readouterr().err
    document = json.loads((tmp_path / "auto" / "comparison.json").read_text())
    by_strength = {c["strength"]: c for c in document["combinations"]}
    assert by_strength[0.5]["image_score"] == "record", "the calibrated combination is scored by dva run's score"
    assert by_strength[0.3]["image_score"] == "p99.5", "the other has no calibration of its recipe"
    assert document["rank_by"] == "null_ratio"
    ratios = [c["summary"]["null_ratio"] for c in sorted(document["combinations"], key=lambda c: c["rank"])]
    assert ratios == sorted(ratios), "lower null ratio ranks first"

    assert compare([*inputs, "--calibration", "off", "--out", str(tmp_path / "off")], capsys) == 0
    document = json.loads((tmp_path / "off" / "comparison.json").read_text())
    assert {c["image_score"] for c in document["combinations"]} == {"p99.5"}

    assert compare([*inputs, "--calibration", "require", "--out", str(tmp_path / "require")], capsys) == 1
    document = json.loads((tmp_path / "require" / "comparison.json").read_text())
    errors = {c["strength"]: c["error"] for c in document["combinations"]}
    assert errors[0.5] is None and errors[0.3].startswith("--calibration require: the calibration in")
